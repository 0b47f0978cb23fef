"""Sampler, LR schedule, parameter groups and exit sampling of the training engine."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ecom2f.engine.exits import ExitSampler, exit_loss_weight
from ecom2f.engine.lr_schedule import lr_multiplier
from ecom2f.engine.param_groups import build_param_groups
from ecom2f.engine.sampler import GlobalStreamSampler, epoch_order


def take(iterator, count):
    return [next(iterator) for _ in range(count)]


def _stream(dataset_size, world_size, per_rank, micro_steps, seed=5, start=0):
    """What all ranks read, micro-step by micro-step, in global order (rank 0's slice first)."""
    iters = [iter(GlobalStreamSampler(dataset_size, r, world_size, per_rank * world_size, seed=seed, start=start))
             for r in range(world_size)]
    return [i for _ in range(micro_steps) for it in iters for i in take(it, per_rank)]


def test_stream_covers_each_epoch_exactly_once_without_padding():
    stream = _stream(10, world_size=3, per_rank=2, micro_steps=5)  # 30 samples: 3 epochs of 10
    for epoch in range(3):
        assert sorted(stream[10 * epoch: 10 * (epoch + 1)]) == list(range(10))
    assert stream[:10] == epoch_order(10, 0, seed=5) and stream[10:20] == epoch_order(10, 1, seed=5)
    assert stream[:10] != epoch_order(10, 0, seed=6)


def test_stream_does_not_depend_on_the_number_of_ranks():
    one = _stream(7, world_size=1, per_rank=4, micro_steps=6)
    two = _stream(7, world_size=2, per_rank=2, micro_steps=6)
    four = _stream(7, world_size=4, per_rank=1, micro_steps=6)
    assert one == two == four


def test_resume_with_fewer_ranks_continues_the_same_stream():
    # 2 ranks x 2 images for 3 micro-steps, then 1 rank x 4 images: nothing skipped or repeated.
    uninterrupted = _stream(7, world_size=2, per_rank=2, micro_steps=8)
    first = _stream(7, world_size=2, per_rank=2, micro_steps=3)
    rest = _stream(7, world_size=1, per_rank=4, micro_steps=5, start=12)
    assert first + rest == uninterrupted


def test_sampler_rejects_inconsistent_settings():
    with pytest.raises(ValueError, match="need 0 <= rank < world_size, got rank=2, world_size=2"):
        GlobalStreamSampler(7, 2, 2, global_batch=4)
    with pytest.raises(ValueError, match="global_batch 3 must be a positive multiple of world_size 2"):
        GlobalStreamSampler(7, 0, 2, global_batch=3)
    with pytest.raises(ValueError, match="start 6 must be a non-negative multiple of the global batch 4"):
        GlobalStreamSampler(7, 0, 2, global_batch=4, start=6)


def test_multistep_schedule_with_warmup_matches_detectron2():
    kwargs = dict(max_iter=368_750, schedule="multistep", steps=(327_778, 355_092), gamma=0.1,
                  warmup_iters=10, warmup_factor=1.0)
    assert lr_multiplier(0, **kwargs) == 1.0  # factor 1.0 makes the warmup a no-op, as in Mask2Former
    assert lr_multiplier(327_777, **kwargs) == 1.0
    assert lr_multiplier(327_778, **kwargs) == pytest.approx(0.1)
    assert lr_multiplier(355_092, **kwargs) == pytest.approx(0.01)
    assert lr_multiplier(5, max_iter=100, warmup_iters=10, warmup_factor=0.001) == pytest.approx(0.001 * 0.5 + 0.5)


def test_poly_schedule():
    assert lr_multiplier(45_000, max_iter=90_000, schedule="poly", power=0.9) == pytest.approx(0.5**0.9)
    assert lr_multiplier(90_000, max_iter=90_000, schedule="poly") == 0.0
    with pytest.raises(ValueError, match="unknown schedule 'cosine'"):
        lr_multiplier(1, max_iter=10, schedule="cosine")


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)
        self.head = nn.Sequential(nn.Conv2d(4, 4, 1), nn.GroupNorm(2, 4))
        self.query = nn.Embedding(5, 4)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(3))


def test_param_groups_follow_the_mask2former_recipe():
    model = _Toy()
    groups = build_param_groups(model, base_lr=1e-4, weight_decay=0.05, backbone_multiplier=0.1)
    by_param = {id(p): g for g in groups for p in g["params"]}
    assert len(by_param) == sum(p.numel() > 0 for p in model.parameters() if p.requires_grad)

    def settings(param):
        group = by_param[id(param)]
        return pytest.approx(group["lr"]), group["weight_decay"]

    assert settings(model.backbone[0].weight) == (1e-5, 0.05)
    assert settings(model.backbone[1].weight) == (1e-5, 0.0)
    assert settings(model.head[0].bias) == (1e-4, 0.05)
    assert settings(model.head[1].weight) == (1e-4, 0.0)
    assert settings(model.query.weight) == (1e-4, 0.0)
    assert settings(model.relative_position_bias_table) == (1e-4, 0.0)
    assert id(model.frozen.weight) not in by_param


def test_exit_weights_and_sampling():
    assert [exit_loss_weight(k) for k in (2, 6)] == [2.0, 6.0]
    assert exit_loss_weight(3, "quadratic") == 9.0 and exit_loss_weight(3, "constant") == 1.0
    sampler = ExitSampler([2, 3, 4, 5, 6], seed=1)
    draws = [sampler(step) for step in range(5000)]
    assert draws == [ExitSampler([2, 3, 4, 5, 6], seed=1)(step) for step in range(5000)]  # same on every rank
    counts = torch.bincount(torch.tensor(draws))[2:]
    assert counts.min() > 900 and counts.max() < 1100
    skewed = ExitSampler([2, 6], probabilities=[0.0, 1.0])
    assert {skewed(step) for step in range(50)} == {6}
    with pytest.raises(ValueError, match=r"probabilities \[1.0\] must be 2 non-negative numbers"):
        ExitSampler([2, 6], probabilities=[1.0])
