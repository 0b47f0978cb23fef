"""``ecom2f model-flops``: the model's analytic compute per encoder depth."""

from __future__ import annotations

import argparse


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``model-flops``."""
    flops = subparsers.add_parser("model-flops", help="analytic GFLOPs of the encoder and the whole model per depth")
    flops.add_argument("--backbone", default="resnet50")
    flops.add_argument("--height", type=int, default=800)
    flops.add_argument("--width", type=int, default=1216)
    flops.set_defaults(func=run_model_flops)


def run_model_flops(args: argparse.Namespace) -> int:
    """Prints a markdown table: encoder and whole-model GFLOPs at every encoder depth."""
    from pydantic import ValidationError

    from ecom2f.config.errors import format_validation_error
    from ecom2f.modeling import ModelConfig, build_model
    from ecom2f.modeling.flops import encoder_gflops, model_gflops

    try:
        model_config = ModelConfig(backbone={"name": args.backbone})
    except ValidationError as error:  # e.g. --backbone resnet5: name the allowed backbones
        raise format_validation_error(error, ModelConfig, f"--backbone {args.backbone}") from None
    model = build_model(model_config)
    print(f"{args.backbone}, {args.height}x{args.width}")
    print("| depth | encoder GFLOPs | model GFLOPs |\n|---|---|---|")
    for depth in range(model.num_encoder_layers + 1):
        print(
            f"| {depth} | {encoder_gflops(model.config, args.height, args.width, depth):.1f} "
            f"| {model_gflops(model, args.height, args.width, depth):.1f} |"
        )
    return 0
