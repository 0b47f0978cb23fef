"""``ecom2f model-flops``: the analytic table, and a bad backbone named on one line."""

from __future__ import annotations

import pytest

from ecom2f.cli import main
from tests.conftest import REPO_ROOT


def test_model_flops_command(capsys):
    assert main(["model-flops", "--backbone", "resnet50", "--height", "512", "--width", "512"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("resnet50, 512x512\n| depth | encoder GFLOPs | model GFLOPs |\n")
    assert "| 3 | 24.0 |" in out  # half of the 48.0 GFLOPs of six layers at 512x512
    assert "| 1 | 8.00 |" in out  # three significant digits below 10


@pytest.mark.parametrize("backbone", ["resnet5", "resnet5O"])
def test_an_unknown_backbone_names_the_allowed_ones(backbone, capsys):
    """Formerly a pydantic traceback; now one line with the choices and the closest one."""
    assert main(["model-flops", "--backbone", backbone]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith(
        f"ecom2f model-flops: error: invalid configuration (--backbone {backbone}): backbone.name: '{backbone}' is not "
        "allowed; allowed: 'resnet18', 'resnet50', "
    )
    assert captured.err.endswith("; did you mean 'resnet50'?\n")


def _depth_6_row(config_model, height: int, width: int) -> str:
    from ecom2f.cli.model_flops import _gflops
    from ecom2f.modeling import build_model
    from ecom2f.modeling.flops import encoder_gflops, model_gflops

    model = build_model(config_model)
    return f"| 6 | {_gflops(encoder_gflops(model.config, height, width, 6))} | {_gflops(model_gflops(model, height, width, 6))} |"


def test_model_flops_of_a_config_uses_its_widths_and_test_size(capsys):
    """Formerly Mask2Former's widths whatever the demo said (3.0 encoder GFLOPs at depth 6 where the demo's
    report said 0.15): now the configuration's model at its test size, what its report counts."""
    from ecom2f.config import load_config
    from ecom2f.modeling import ModelConfig

    demo = REPO_ROOT / "configs" / "demo_cpu.yaml"
    config = load_config(demo)
    size = (config.data.test_min_size, config.data.test_max_size)
    assert main(["model-flops", "--config", str(demo)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"{config.model.backbone.name} ({demo}), {size[0]}x{size[1]}"
    assert _depth_6_row(config.model, *size) in out
    assert _depth_6_row(ModelConfig(backbone={"name": config.model.backbone.name}), *size) not in out
    # flags still win over the configuration
    assert main(["model-flops", "--config", str(demo), "--height", "256", "--width", "256", "--backbone",
                 "resnet50"]) == 0
    assert capsys.readouterr().out.startswith(f"resnet50 ({demo}), 256x256\n")


def test_model_flops_refuses_a_non_positive_size(capsys):
    assert main(["model-flops", "--height", "0"]) == 2
    assert capsys.readouterr().err == "ecom2f model-flops: error: --height 0: an image side must be at least 1 pixel\n"
