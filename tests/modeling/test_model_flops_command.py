from __future__ import annotations

import argparse

from ecom2f.cli import model as model_command


def test_model_flops_command(capsys):
    parser = argparse.ArgumentParser()
    model_command.add_commands(parser.add_subparsers())
    args = parser.parse_args(["model-flops", "--backbone", "resnet50", "--height", "512", "--width", "512"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "| 3 | 24.0 |" in out  # half of the 48.0 GFLOPs of six layers at 512x512
