"""Step 1's training step reads nothing back from the device but the matching costs.

On a GPU every read of device data (``.item()``, ``float(loss)``, ``.tolist()``, ...) makes
the host wait for the queue to drain. The counter (tests/modeling/sync_counter.py) records
such reads, wherever they come from (ecom2f, DeepSpeed, the loop), during whole steps of the
real loop's ``train_step`` through DeepSpeed; the batches come from the data loader and live
on the host, as in production.
"""

from __future__ import annotations

import pytest
import torch

from ecom2f.steps.datasets import training_dataset
from ecom2f.steps.parent.build import build_trainer
from ecom2f.steps.parent.loader import training_batches
from ecom2f.steps.parent.progress import LossWindow
from ecom2f.steps.parent.train import train_step
from tests import distributed
from tests.modeling.sync_counter import SyncCounter
from tests.steps.conftest import tiny_config


@pytest.fixture(scope="module", autouse=True)
def process_group():
    with distributed.single_process_group():
        yield


def _host_batches(config, count: int) -> list[dict]:
    stream = training_batches(config, training_dataset(config), 0, 1, torch.device("cpu"), samples_consumed=0)
    return [next(stream) for _ in range(count)]


def _host_tensors(batch: dict) -> list[torch.Tensor]:
    return [batch["images"], batch["padding_mask"], *(t for target in batch["targets"] for t in target.values())]


@pytest.mark.parametrize(("mode", "precision"), [("sampled", "fp32"), ("sampled", "bf16"), ("all_exits", "fp32")])
def test_a_training_step_copies_only_the_matching_costs_to_the_host(tiny_data_root, tmp_path, mode, precision):
    overrides = ["ray.num_workers=1", "solver.ims_per_batch=2", "solver.gradient_accumulation_steps=2",
                 "solver.lr_schedule.steps=[]", f"solver.precision={precision}", "solver.max_iter=10"]
    if mode == "all_exits":
        overrides += ["parent.all_exits=true", "parent.exits=[2,4,6]"]
    config = tiny_config(tiny_data_root, tmp_path / "runs", *overrides)
    trainer = build_trainer(config, rank=0, device=torch.device("cpu"))
    batches = _host_batches(config, 6)  # a warm-up step, then 2 steps of 2 micro-batches
    exits = [2, 4, 6] if mode == "all_exits" else [3]
    window = LossWindow()
    train_step(trainer, iter(batches[:2]), exits, accumulation=2)
    # torch's AdamW keeps its step counts as CPU scalars (read with .item(), no device sync).
    adam_steps = [state["step"] for state in trainer.optimizer.state.values()]
    with SyncCounter() as counter:
        counter.host(*adam_steps, *(t for batch in batches for t in _host_tensors(batch)))
        stream = iter(batches[2:])
        for _ in range(2):
            window.add(train_step(trainer, stream, exits, accumulation=2), images=2)
    criterion_calls = 2 * 2 * len(exits)  # steps x micro-batches x exits
    matcher_copies = [call for call in counter.calls if call[0] == "cpu" and call[1].startswith("matcher.py:")]
    others = [call for call in counter.calls if call not in matcher_copies]
    assert others == [], others
    assert len(matcher_copies) == criterion_calls
    # The report every log_period reads the window: one transfer.
    with SyncCounter() as counter:
        sums, _ = window.read(step=2)
    assert len(counter.calls) == 1 and sorted(sums) == sorted(exits)
