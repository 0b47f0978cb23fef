"""Our DeepSpeed config, parameter groups and schedule in a real DeepSpeed engine on CPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

deepspeed = pytest.importorskip("deepspeed")

from ecom2f.engine.deepspeed_config import build_deepspeed_config  # noqa: E402
from ecom2f.engine.lr_schedule import lr_multiplier  # noqa: E402
from ecom2f.engine.optimizer import ExitAwareAdamW  # noqa: E402
from ecom2f.engine.param_groups import build_param_groups, encoder_layer_reach  # noqa: E402
from tests import distributed  # noqa: E402


@pytest.fixture(scope="module")
def single_process_group():
    with distributed.single_process_group():
        yield


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(4, 8)
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(8, 1))

    def forward(self, x):
        return self.head(self.backbone(x))


def _engine(zero_stage, seed=0):
    torch.manual_seed(seed)
    model = _Net()
    groups = build_param_groups(model, base_lr=1e-2, weight_decay=0.05, backbone_multiplier=0.1)
    optimizer = torch.optim.AdamW(groups)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step, max_iter=10, schedule="multistep", steps=(2,), gamma=0.5)
    )
    config = build_deepspeed_config(micro_batch_per_worker=4, zero_stage=zero_stage, gradient_clipping=0.01)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config)
    return engine


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", [0, 1, 2])
def test_engine_trains_with_our_groups_and_schedule_and_round_trips(single_process_group, zero_stage, tmp_path):
    engine = _engine(zero_stage)
    x, y = torch.randn(4, 4), torch.randn(4, 1)
    lrs = []
    for _ in range(3):
        loss = nn.functional.mse_loss(engine(x), y)
        engine.backward(loss)
        engine.step()
        lrs.append(sorted(engine.get_lr()))
    # Two groups (backbone x0.1); multistep halves both at step 2.
    assert lrs[0] == pytest.approx([1e-3, 1e-2]) and lrs[2] == pytest.approx([5e-4, 5e-3])
    assert engine.global_steps == 3
    engine.save_checkpoint(str(tmp_path), tag="step3", client_state={"samples_consumed": 12})

    restored = _engine(zero_stage, seed=1)
    _, client_state = restored.load_checkpoint(str(tmp_path), tag="step3")
    assert client_state["samples_consumed"] == 12 and restored.global_steps == 3
    for a, b in zip(engine.module.parameters(), restored.module.parameters()):
        assert torch.equal(a, b)
    assert sorted(restored.get_lr()) == pytest.approx([5e-4, 5e-3])


def test_config_validation():
    with pytest.raises(ValueError, match="zero_stage must be 0, 1, 2 or 3, got 4"):
        build_deepspeed_config(micro_batch_per_worker=1, zero_stage=4)
    with pytest.raises(ValueError, match="precision must be 'fp32', 'bf16' or 'fp16', got 'fp8'"):
        build_deepspeed_config(micro_batch_per_worker=1, precision="fp8")
    config = build_deepspeed_config(micro_batch_per_worker=2, gradient_accumulation_steps=4, precision="bf16")
    # Autocast with fp32 weights, and no module on DeepSpeed's low-precision gradient-reduce list.
    assert config["torch_autocast"] == {"enabled": True, "dtype": "bfloat16", "lower_precision_safe_modules": []}
    assert "bf16" not in config and "fp16" not in config
    assert config["gradient_clipping"] == 0.01
    assert config["train_micro_batch_size_per_gpu"] == 2 and config["gradient_accumulation_steps"] == 4
    assert "torch_autocast" not in build_deepspeed_config(micro_batch_per_worker=1, precision="fp32")


class _Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))


class _EarlyExitNet(nn.Module):
    """A stem, three encoder layers reached at exits 1, 2, 3, and a head, like the parent's layout."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(4, 4)
        self.pixel_decoder = nn.Module()
        self.pixel_decoder.encoder = _Encoder()
        self.head = nn.Linear(4, 1)

    def forward(self, x, depth):
        x = self.backbone(x)
        for layer in self.pixel_decoder.encoder.layers[:depth]:
            x = torch.relu(layer(x))
        return self.head(x)


@pytest.mark.parametrize("zero_stage", [0, 1, 2])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_layers_an_exit_does_not_reach_are_not_updated(single_process_group, zero_stage, precision):
    torch.manual_seed(0)
    model = _EarlyExitNet()
    reach = encoder_layer_reach(model)
    groups = build_param_groups(model, base_lr=1e-2, weight_decay=0.05, reach=reach)
    assert sorted({g["min_exit"] for g in groups}) == [0, 1, 2, 3]
    optimizer = ExitAwareAdamW(groups)
    config = build_deepspeed_config(micro_batch_per_worker=4, zero_stage=zero_stage, precision=precision)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    x, y = torch.randn(4, 4), torch.randn(4, 1)
    for depth in (3, 1):  # the first step gives every layer AdamW state (momentum) and decays it
        before = {name: p.detach().clone() for name, p in engine.module.named_parameters()}
        optimizer.set_exit(depth)
        engine.backward(nn.functional.mse_loss(engine(x, depth), y))
        engine.step()
        for name, p in engine.module.named_parameters():
            unreached = name.startswith("pixel_decoder.encoder.layers.") and int(name.split(".")[3]) >= depth
            changed = not torch.equal(before[name], p.detach())
            assert changed != unreached, (depth, name)
            assert p.dtype == torch.float32  # fp32 weights also under autocast
