"""A training step (forward, criterion, backward) reads the device once per criterion call,
and runs under bf16 autocast with float32 losses."""

from __future__ import annotations

import pytest
import torch

from ecom2f.modeling.criterion import SetCriterion
from ecom2f.modeling.matcher import HungarianMatcher
from tests.modeling.sync_counter import SyncCounter
from tests.modeling.tiny import tiny_model

NUM_POINTS = 64


def _batch(seed: int = 0):
    """Two 64x96 images; 3 and 0 targets of random rectangles (an empty image included)."""
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randn(2, 3, 64, 96, generator=gen)
    masks = torch.zeros(3, 64, 96, dtype=torch.bool)
    for t in range(3):
        masks[t, 8 * t : 8 * t + 30, 10 * t : 10 * t + 40] = True
    targets = [
        {"labels": torch.tensor([3, 17, 132]), "masks": masks},
        {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 64, 96, dtype=torch.bool)},
    ]
    return pixels, targets


def _criterion(num_classes: int) -> SetCriterion:
    return SetCriterion(num_classes, HungarianMatcher(num_points=NUM_POINTS), num_points=NUM_POINTS)


@pytest.fixture(scope="module")
def model():
    return tiny_model().train()


def _counted_step(model, pixels, targets, step) -> SyncCounter:
    counter = SyncCounter()
    # The data loader's targets live on the host: reading them is no device sync.
    counter.host(*(tensor for target in targets for tensor in target.values()))
    model.zero_grad()
    with counter:
        total = step()
        total.backward()
    model.zero_grad()
    return counter


def _only_matcher_copies(counter: SyncCounter, calls: int) -> None:
    assert [name for name, _ in counter.calls] == ["cpu"] * calls, counter.calls
    assert all(where.startswith("matcher.py:") for _, where in counter.calls), counter.calls


@pytest.mark.parametrize("depth", [3, [1, 4]])
def test_forward_raw_step_reads_the_device_once(model, depth):
    pixels, targets = _batch()
    criterion = _criterion(model.config.num_classes)

    def step():
        outputs = model.forward_raw(pixels, depth=depth)
        return criterion(outputs, targets, exit_weight=0.5)["total"]

    _only_matcher_copies(_counted_step(model, pixels, targets, step), 1)


def test_forward_exits_step_reads_the_device_once_per_exit(model):
    pixels, targets = _batch(1)
    criterion = _criterion(model.config.num_classes)
    exits = [0, 2, 5]

    def step():
        outputs = model.forward_exits(pixels, exits, aux=True)
        return sum(criterion(outputs[k], targets, exit_weight=1.0 / (k + 1))["total"] for k in exits)

    _only_matcher_copies(_counted_step(model, pixels, targets, step), len(exits))


def test_the_counter_sees_what_a_device_read_costs():
    """The counter itself: each kind of read counts once, host tensors and plain indexing do not."""
    x = torch.arange(6.0)
    host = torch.arange(3)
    counter = SyncCounter()
    counter.host(host)
    with counter:
        x.sum().item()
        x.tolist()
        bool(x[0] > 0)
        int(x[1])
        x.nonzero()
        torch.where(x > 2)
        x[x > 2]
        x[1:3]  # plain indexing: not counted
        torch.where(x > 2, x, 0.0)  # three arguments: not counted
        y = x.cpu()
        y.numpy()  # the copy is on the host now
        host.tolist()
    names = [name for name, _ in counter.calls]
    assert names == ["item", "tolist", "__bool__", "__int__", "nonzero", "torch.where", "__getitem__", "cpu"]
    assert torch.Tensor.item is torch._C.TensorBase.item  # restored


def _step_losses(model, pixels, targets, autocast: bool) -> dict:
    criterion = _criterion(model.config.num_classes)
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        outputs = model.forward_raw(pixels, depth=4)
        losses = criterion(outputs, targets, generator=torch.Generator().manual_seed(3))
    losses["total"].backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return losses, grads


def test_bf16_autocast_step_gives_float32_losses_close_to_float32(model):
    pixels, targets = _batch(2)
    plain, plain_grads = _step_losses(model, pixels, targets, autocast=False)
    mixed, mixed_grads = _step_losses(model, pixels, targets, autocast=True)
    assert set(mixed) == set(plain)
    for name, value in mixed.items():
        assert value.dtype == torch.float32, name
        assert torch.isfinite(value), name
        # bf16 moves the untrained model's masks by ~3%, enough to swap near-tied matches
        # and uncertain points (a few % on single terms); the sum stays within 2%.
        assert value.item() == pytest.approx(plain[name].item(), rel=0.1), name
    assert mixed["total"].item() == pytest.approx(plain["total"].item(), rel=0.02)
    # Every parameter the fp32 step reaches gets a finite, non-zero fp32 gradient under autocast.
    assert set(mixed_grads) == set(plain_grads)
    encoder = "pixel_decoder.transformer.encoder.layers"
    assert f"{encoder}.3.linear1.weight" in mixed_grads and f"{encoder}.4.linear1.weight" not in mixed_grads
    for name, grad in mixed_grads.items():
        assert grad.dtype == torch.float32 and torch.isfinite(grad).all(), name
        if plain_grads[name].abs().max() > 0:
            assert grad.abs().max() > 0, name


@pytest.mark.gpu
@pytest.mark.parametrize("exits", [[3], [0, 2, 5]])
def test_cuda_step_synchronises_once_per_criterion_call(exits):
    """On a GPU, CUDA's own sync detector sees what the CPU counter cannot (blocking copies
    inside C++ included): after a warm-up step, only the matcher's cost copy synchronises."""
    import warnings

    device = torch.device("cuda")
    model = tiny_model().train().to(device)
    criterion = _criterion(model.config.num_classes)
    pixels, targets = _batch(4)
    pinned = [{k: v.pin_memory() for k, v in t.items()} for t in targets]

    def step():
        x = pixels.pin_memory().to(device, non_blocking=True)
        moved = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in pinned]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            if len(exits) > 1:
                outputs = model.forward_exits(x, exits)
            else:
                outputs = {exits[0]: model.forward_raw(x, depth=exits[0])}
            total = sum(criterion(outputs[k], moved)["total"] for k in exits)
        total.backward()
        model.zero_grad(set_to_none=True)

    step()  # warm-up: library handles and workspaces are created once
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step()
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) == len(exits), syncs
