"""``ecom2f model-flops``: the model's analytic compute per encoder depth."""

from __future__ import annotations

import argparse

from ecom2f.cli.run_config import add_run_config_arguments, load_run_config
from ecom2f.errors import BadInputError

DEFAULT_BACKBONE = "resnet50"
DEFAULT_SIZE = (800, 1216)  # a COCO image after Mask2Former's test resize (shorter side 800)


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``model-flops``."""
    flops = subparsers.add_parser(
        "model-flops", help="analytic GFLOPs of the encoder and the whole model per depth",
        description="Prints the encoder's and the whole model's GFLOPs per image at every encoder depth. With "
                    "--config (or --run RUN, a run's saved configuration) the model is that configuration's "
                    "(backbone, widths, layers) and the image its largest test image; without, Mask2Former's "
                    f"defaults with --backbone on a {DEFAULT_SIZE[0]}x{DEFAULT_SIZE[1]} image.",
    )
    add_run_config_arguments(flops)
    flops.add_argument("--backbone", help=f"backbone name (default: the configuration's, else {DEFAULT_BACKBONE})")
    flops.add_argument("--height", type=int, metavar="PX",
                       help=f"image height (default: the configuration's data.test_min_size, else {DEFAULT_SIZE[0]})")
    flops.add_argument("--width", type=int, metavar="PX",
                       help=f"image width (default: the configuration's data.test_max_size, else {DEFAULT_SIZE[1]})")
    flops.set_defaults(func=run_model_flops, validate=validate_model_flops)


def validate_model_flops(args: argparse.Namespace):
    """``(model configuration, height, width, title)`` of the arguments, before torch is imported."""
    from pydantic import ValidationError

    from ecom2f.config.errors import format_validation_error
    from ecom2f.config.model import ModelConfig

    for flag in ("height", "width"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise BadInputError(f"--{flag} {value}: an image side must be at least 1 pixel")
    if args.config is None and args.run is None:
        backbone = args.backbone or DEFAULT_BACKBONE
        try:
            model = ModelConfig(backbone={"name": backbone})
        except ValidationError as error:  # e.g. --backbone resnet5: name the allowed backbones
            raise format_validation_error(error, ModelConfig, f"--backbone {backbone}") from None
        return model, args.height or DEFAULT_SIZE[0], args.width or DEFAULT_SIZE[1], backbone
    if args.backbone:
        args.overrides = [*args.overrides, f"model.backbone.name={args.backbone}"]
    config = load_run_config(args)
    title = f"{config.model.backbone.name} ({args.config or args.run})"
    return (config.model, args.height or config.data.test_min_size, args.width or config.data.test_max_size, title)


def _gflops(value: float) -> str:
    return f"{value:.1f}" if value >= 10 else f"{value:#.3g}"  # 3 significant digits: 0.152, 8.00


def run_model_flops(args: argparse.Namespace) -> int:
    """Prints a markdown table: encoder and whole-model GFLOPs at every encoder depth."""
    model_config, height, width, title = args.validate(args)
    from ecom2f.modeling import build_model
    from ecom2f.modeling.flops import encoder_gflops, model_gflops

    model = build_model(model_config)
    print(f"{title}, {height}x{width}")
    print("| depth | encoder GFLOPs | model GFLOPs |\n|---|---|---|")
    for depth in range(model.num_encoder_layers + 1):
        print(f"| {depth} | {_gflops(encoder_gflops(model.config, height, width, depth))} "
              f"| {_gflops(model_gflops(model, height, width, depth))} |")
    return 0
