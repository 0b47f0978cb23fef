"""``ecom2f model-flops``: the analytic table, and a bad backbone named on one line."""

from __future__ import annotations

from ecom2f.cli import main


def test_model_flops_command(capsys):
    assert main(["model-flops", "--backbone", "resnet50", "--height", "512", "--width", "512"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("resnet50, 512x512\n| depth | encoder GFLOPs | model GFLOPs |\n")
    assert "| 3 | 24.0 |" in out  # half of the 48.0 GFLOPs of six layers at 512x512


def test_an_unknown_backbone_names_the_allowed_ones(capsys):
    """Formerly a pydantic traceback; now one line with the choices and the closest one."""
    assert main(["model-flops", "--backbone", "resnet5"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith(
        "ecom2f model-flops: error: invalid configuration (--backbone resnet5): backbone.name: 'resnet5' is not "
        "allowed; allowed: 'resnet18', 'resnet50', "
    )
    assert captured.err.endswith("; did you mean 'resnet50'?\n")
