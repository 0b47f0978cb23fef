"""Step 1's progress line: one line per report, detectron2 style, losses before alpha_k
(ecom2f/steps/parent/progress.py; printed by rank 0 of the Ray Train session)."""

from __future__ import annotations

import pytest
import torch

from ecom2f.steps.parent.progress import (
    LossWindow,
    WindowStats,
    eta_seconds,
    max_memory_mb,
    progress_line,
    window_loss_metrics,
)


def _window(steps: list[dict[int, float]], images_per_step: int = 4) -> LossWindow:
    window = LossWindow()
    for losses in steps:
        window.add({k: torch.tensor(v) for k, v in losses.items()}, images=images_per_step)
    return window


def test_one_exit_per_step_total_and_unscaled_losses_by_hand():
    """Steps drew exits 2, 6, 2 with alpha-scaled losses 10, 240, 14 (alpha_k = k, linear): the optimised
    loss per step averages (10 + 240 + 14) / 3 = 88; exit 2's loss is (10 + 14) / 2 = 12 scaled, 6 before
    alpha; exit 6's is 240 scaled, 40 before alpha."""
    stats = _window([{2: 10.0}, {6: 240.0}, {2: 14.0}]).read_stats(step=3)
    assert stats.steps == 3 and stats.sums == {2: (24.0, 2), 6: (240.0, 1)}
    assert window_loss_metrics(stats, "linear") == {
        "total_loss": 88.0, "loss_exit_2": 12.0, "raw_loss_exit_2": 6.0, "loss_exit_6": 240.0, "raw_loss_exit_6": 40.0,
    }
    assert window_loss_metrics(stats, "quadratic")["raw_loss_exit_6"] == pytest.approx(240.0 / 36)
    assert window_loss_metrics(stats, "constant")["raw_loss_exit_2"] == 12.0


def test_all_exits_per_step_sums_the_exits_into_the_total():
    stats = _window([{2: 4.0, 4: 8.0}, {2: 6.0, 4: 12.0}]).read_stats(step=2)
    metrics = window_loss_metrics(stats, "linear")
    assert metrics["total_loss"] == 15.0  # (4 + 8 + 6 + 12) / 2 steps
    assert (metrics["raw_loss_exit_2"], metrics["raw_loss_exit_4"]) == (2.5, 2.5)


def test_a_read_resets_the_window_and_the_old_read_still_works():
    window = _window([{3: 3.0}])
    sums, rate = window.read(step=1)
    assert sums == {3: (3.0, 1)} and rate > 0
    assert window.steps == 0 and window.read_stats(step=1).sums == {}
    with pytest.raises(FloatingPointError, match="diverged before step 7"):
        _window([{3: float("nan")}]).read_stats(step=7)


def test_the_line_by_hand():
    metrics = {"step": 20, "max_iter": 900, "lr": 4e-4, "images_per_s": 10.0, "samples_consumed": 80,
               "total_loss": 152.31, "loss_exit_2": 80.12, "raw_loss_exit_2": 40.06, "loss_exit_5": 192.0,
               "raw_loss_exit_5": 38.4, "max_mem_mb": 812.4, "world_size": 2, "precision": "fp32"}
    # eta: 880 iterations x 4 images each at 10 images/s = 352 s
    assert eta_seconds(metrics) == pytest.approx(352.0)
    assert progress_line(metrics) == ("iter 20/900  eta 0:05:52  lr 4.00e-04  total_loss 152.3  loss@exit(2) 40.06  "
                                      "loss@exit(5) 38.4  img/s 10  max_mem 812M")


def test_the_issues_example_reads_the_same_loss_at_both_exits():
    """Exit 6 read ~244 against ~39 for exit 1 in the raw reports, as if deeper exits were worse; before
    alpha_k they are 40.7 and 39."""
    stats = WindowStats(sums={1: (39.0, 1), 6: (244.0, 1)}, steps=2, images_per_s=8.0)
    line = progress_line({"step": 10, **window_loss_metrics(stats, "linear")})
    assert line == "iter 10  total_loss 141.5  loss@exit(1) 39  loss@exit(6) 40.67"


def test_a_report_without_the_new_keys_still_prints_a_line():
    """A loop that reports only the scaled losses gets them labelled as scaled, and no eta without max_iter."""
    line = progress_line({"step": 30, "lr": 4e-6, "images_per_s": 9.24, "loss_exit_3": 109.13, "loss_exit_1": 35.76})
    assert line == "iter 30  lr 4.00e-06  scaled_loss@exit(1) 35.76  scaled_loss@exit(3) 109.1  img/s 9.24"


def test_peak_memory_on_the_cpu_is_the_processes_resident_peak():
    before = max_memory_mb(torch.device("cpu"))
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    assert max_memory_mb(torch.device("cpu")) >= max(before, 64)
    del block
