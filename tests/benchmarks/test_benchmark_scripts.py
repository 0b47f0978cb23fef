"""The benchmark scripts under benchmarks/ run (tiny sizes) and print their tables."""

from __future__ import annotations

from benchmarks import evaluation_metrics, model_depths


def test_pq_benchmark_runs_on_a_small_image(capsys):
    assert evaluation_metrics.main(["--height", "40", "--width", "60", "--segments", "6", "--runs", "2"]) == 0
    assert "PanopticGroundTruth.pq" in capsys.readouterr().out


def test_model_benchmark_prints_all_three_tables(capsys):
    assert model_depths.main(["--backbone", "resnet18", "--size", "64", "--runs", "1", "--batch", "2", "--small"]) == 0
    out = capsys.readouterr().out
    assert "| depth | wall s |" in out and "| 6 |" in out
    assert "one all-exits pass" in out
    assert "| batch 2 |" in out
    assert "| grid_sample reference |" in out


def test_time_cases_interleaves_and_reports_medians():
    calls = []
    timed = model_depths.time_cases({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, runs=3, warmup=1)
    assert calls == ["a", "b", "a", "b", "a", "b", "a", "b"]
    assert set(timed) == {"a", "b"} and all(len(v) == 2 for v in timed.values())
