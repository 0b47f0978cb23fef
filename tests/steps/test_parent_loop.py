"""Step 1's training loop, called directly (no Ray): it learns at every exit and resumes exactly."""

from __future__ import annotations

import pytest
import torch

from ecom2f.data import collate_samples
from ecom2f.modeling import build_criterion, build_model, normalize_batch
from ecom2f.steps.datasets import training_dataset
from ecom2f.steps.parent import train_parent
from ecom2f.steps.parent.session import LocalSession
from ecom2f.storage.layout import PARENT_WEIGHTS
from tests import distributed
from tests.steps.conftest import tiny_config


@pytest.fixture(scope="module", autouse=True)
def process_group():
    with distributed.single_process_group():
        yield


class _FixedBatch(torch.utils.data.Dataset):
    """The same image forever, so the loop must overfit it."""

    def __init__(self, dataset):
        self.sample = dataset[0]

    def __len__(self):
        return 1

    def __getitem__(self, index):
        return self.sample


def _loss_per_exit(config, model, sample) -> dict[int, float]:
    """The criterion's loss at every exit, with fixed sampling points (no training noise)."""
    batch = collate_samples([sample])
    pixels = normalize_batch(batch["images"], batch["padding_mask"], model)
    criterion = build_criterion(config.model)
    with torch.no_grad():
        return {
            k: float(criterion(model.forward_raw(pixels, depth=k), batch["targets"],
                               generator=torch.Generator().manual_seed(0))["total"])
            for k in range(1, 7)
        }


@pytest.mark.slow
def test_loop_overfits_a_fixed_batch_at_every_exit(tiny_data_root, tmp_path):
    # One exit drawn per iteration, as in real training; afterwards the loss at every
    # exit must have fallen by a clear factor on the image it saw.
    config = tiny_config(
        tiny_data_root, tmp_path / "runs", "data.recipe=none", "solver.max_iter=40", "solver.base_lr=3e-3",
        "solver.lr_schedule.steps=[39]", "parent.log_period=1", "parent.checkpoint_period=1000",
        "ray.num_workers=1", "solver.ims_per_batch=1", "parent.alpha=constant",
    )
    fixed = _FixedBatch(training_dataset(config))
    session = LocalSession(tmp_path / "session")
    train_parent(config, session, fixed)
    assert [r["step"] for r in session.reported] == list(range(1, 41))
    drawn = {k for r in session.reported for k in range(1, 7) if f"loss_exit_{k}" in r}
    assert drawn == set(range(1, 7))

    torch.manual_seed(config.seed)  # train_parent's initialisation (rank 0)
    initial = build_model(config.model)
    trained = build_model(config.model)
    trained.load_state_dict(_weights(session))
    before = _loss_per_exit(config, initial, fixed.sample)
    after = _loss_per_exit(config, trained, fixed.sample)
    for k in range(1, 7):
        assert after[k] < 0.5 * before[k], (k, before, after)


def _weights(session: LocalSession) -> dict:
    checkpoint = session.latest_checkpoint()
    return torch.load(f"{checkpoint}/{PARENT_WEIGHTS}", weights_only=True)


class _Crash(Exception):
    pass


def test_resumed_run_equals_uninterrupted_run(tiny_data_root, tmp_path):
    # Augmentation on, sampled exits: a resume that lost the sampler position, the RNG,
    # the step counter or the LR schedule would end with different weights.
    config = tiny_config(
        tiny_data_root, tmp_path / "runs", "solver.max_iter=6", "parent.checkpoint_period=3",
        "parent.log_period=1", "ray.num_workers=1", "solver.ims_per_batch=2", "solver.lr_schedule.steps=[4]",
    )
    dataset = training_dataset(config)
    straight = LocalSession(tmp_path / "straight")
    train_parent(config, straight, dataset)

    def crash_at_step_4(step, rank):
        if step == 4:
            raise _Crash

    interrupted = LocalSession(tmp_path / "interrupted")
    with pytest.raises(_Crash):
        train_parent(config, interrupted, dataset, fault=crash_at_step_4)
    assert interrupted.latest_checkpoint().endswith("checkpoint_000000003")
    resumed = LocalSession(tmp_path / "interrupted")
    last = train_parent(config, resumed, dataset)

    assert [r["step"] for r in resumed.reported] == [4, 5, 6]
    assert all(r["resumed_from"] == 3 for r in resumed.reported)
    assert [r["samples_consumed"] for r in resumed.reported] == [8, 10, 12]
    assert [r["lr"] for r in resumed.reported] == pytest.approx([r["lr"] for r in straight.reported[3:]])
    assert last == {**straight.reported[-1], "images_per_s": last["images_per_s"], "resumed_from": 3}
    straight_weights, resumed_weights = _weights(straight), _weights(resumed)
    assert straight_weights.keys() == resumed_weights.keys()
    for name in straight_weights:
        assert torch.equal(straight_weights[name], resumed_weights[name]), name


def test_all_exits_mode_and_gradient_accumulation(tiny_data_root, tmp_path):
    # all_exits: every exit's loss each iteration; accumulation: 2 micro-batches per step.
    config = tiny_config(
        tiny_data_root, tmp_path / "runs", "data.recipe=none", "solver.max_iter=2", "parent.all_exits=true",
        "parent.exits=[2,4,6]", "parent.log_period=1", "parent.checkpoint_period=1000", "ray.num_workers=1",
        "solver.ims_per_batch=4", "solver.gradient_accumulation_steps=2", "solver.lr_schedule.steps=[1]",
    )
    session = LocalSession(tmp_path / "session")
    train_parent(config, session, training_dataset(config))
    assert [r["step"] for r in session.reported] == [1, 2]
    for report in session.reported:
        assert {k for k in range(1, 7) if f"loss_exit_{k}" in report} == {2, 4, 6}
    assert [r["samples_consumed"] for r in session.reported] == [4, 8]  # 2 micro-batches of 2 per step
