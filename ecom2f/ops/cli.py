"""``ecom2f bench-ops``: the deformable-attention benchmark."""

from __future__ import annotations


def add_commands(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench-ops", help="benchmark the deformable-attention kernel against the grid_sample reference"
    )
    parser.add_argument("--runs", type=int, default=10, help="timed runs per case (median reported)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run")
    parser.set_defaults(func=_run)


def _run(args) -> int:
    from ecom2f.ops.bench import main

    return main(["--runs", str(args.runs), "--device", args.device])
