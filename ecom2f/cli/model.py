"""``ecom2f model-flops``: the model's analytic compute per encoder depth."""

from __future__ import annotations


def add_commands(subparsers) -> None:
    flops = subparsers.add_parser("model-flops", help="analytic GFLOPs of the encoder and the whole model per depth")
    flops.add_argument("--backbone", default="resnet50")
    flops.add_argument("--height", type=int, default=800)
    flops.add_argument("--width", type=int, default=1216)
    flops.set_defaults(func=_flops)


def _flops(args) -> int:
    from ecom2f.modeling import ModelConfig, build_model
    from ecom2f.modeling.flops import encoder_gflops, model_gflops

    model = build_model(ModelConfig(backbone={"name": args.backbone}))
    print(f"{args.backbone}, {args.height}x{args.width}")
    print("| depth | encoder GFLOPs | model GFLOPs |\n|---|---|---|")
    for depth in range(model.num_encoder_layers + 1):
        print(
            f"| {depth} | {encoder_gflops(model.config, args.height, args.width, depth):.1f} "
            f"| {model_gflops(model, args.height, args.width, depth):.1f} |"
        )
    return 0
