from __future__ import annotations

import argparse

from ecom2f.modeling import bench, cli


def test_bench_prints_all_three_tables(capsys):
    assert bench.main(["--backbone", "resnet18", "--size", "64", "--runs", "1", "--batch", "2", "--small"]) == 0
    out = capsys.readouterr().out
    assert "| depth | wall s |" in out and "| 6 |" in out
    assert "one all-exits pass" in out
    assert "| batch 2 |" in out
    assert "| grid_sample reference |" in out


def test_time_cases_interleaves_and_reports_medians():
    calls = []
    timed = bench.time_cases({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, runs=3, warmup=1)
    assert calls == ["a", "b", "a", "b", "a", "b", "a", "b"]
    assert set(timed) == {"a", "b"} and all(len(v) == 2 for v in timed.values())


def test_model_flops_command(capsys):
    parser = argparse.ArgumentParser()
    cli.add_commands(parser.add_subparsers())
    args = parser.parse_args(["model-flops", "--backbone", "resnet50", "--height", "512", "--width", "512"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "| 3 | 24.0 |" in out  # half of the 48.0 GFLOPs of six layers at 512x512
