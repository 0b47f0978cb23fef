"""Sampler, LR schedule, parameter groups and exit sampling of the training engine."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ecom2f.engine.exits import ExitSampler, exit_loss_weight
from ecom2f.engine.lr_schedule import lr_multiplier
from ecom2f.engine.param_groups import build_param_groups
from ecom2f.engine.sampler import ResumableShardedSampler


def take(iterator, count):
    return [next(iterator) for _ in range(count)]


def test_sampler_shards_cover_each_epoch_exactly_once():
    samplers = [ResumableShardedSampler(10, rank, 3, seed=5) for rank in range(3)]
    epoch0 = [take(iter(s), 4) for s in samplers]  # ceil(10 / 3) = 4 per rank, 2 padded
    flat = sorted(i for shard in epoch0 for i in shard)
    assert set(flat) == set(range(10)) and len(flat) == 12
    assert epoch0 != [take(iter(ResumableShardedSampler(10, r, 3, seed=6)), 4) for r in range(3)]


def test_sampler_resumes_exactly_where_it_stopped():
    full = take(iter(ResumableShardedSampler(7, 1, 2, seed=3)), 23)  # crosses several epochs
    for consumed in (0, 3, 4, 9, 17):
        state = ResumableShardedSampler(7, 1, 2, seed=3).state_dict(samples_consumed=consumed)
        resumed = ResumableShardedSampler.from_state_dict(state, dataset_size=7, rank=1, world_size=2)
        assert take(iter(resumed), 23 - consumed) == full[consumed:]


def test_sampler_refuses_a_changed_world():
    state = ResumableShardedSampler(7, 0, 2).state_dict(samples_consumed=5)
    with pytest.raises(ValueError, match="world_size=2, this run has dataset_size=7 and world_size=4"):
        ResumableShardedSampler.from_state_dict(state, dataset_size=7, rank=0, world_size=4)
    with pytest.raises(ValueError, match="need 0 <= rank < world_size, got rank=2, world_size=2"):
        ResumableShardedSampler(7, 2, 2)


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
