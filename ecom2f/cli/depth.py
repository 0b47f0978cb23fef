"""``ecom2f build-depth`` and ``ecom2f depth-labels``: step 2 as commands (also ``python -m ray_jobs.build_depth_dataset``)."""

from __future__ import annotations

import argparse
import logging
import sys

from ecom2f.cli.steps import add_config_arguments, load_run_config


def add_commands(subparsers) -> None:
    parser = subparsers.add_parser(
        "build-depth",
        help="step 2: the parent at every exit on every training image -> parquet (Ray Data)",
        description="Step 2 of ECO-M2F on the Ray cluster in $RAY_ADDRESS (else a local one): per image and exit "
        "the loss and PQ/SQ/RQ, and the gate features, under <run>/depth/. Rerunning skips complete shards.",
    )
    add_config_arguments(parser)
    parser.set_defaults(func=_build_depth)

    parser = subparsers.add_parser(
        "depth-labels",
        help="step 2's labels: histogram of the ideal exits and mean depth per beta",
        description="Reads <run>/depth/ and prints, per beta, the share of images whose ideal exit "
        "argmax_k(q_k - beta * cost_k) is each exit, and the mean depth.",
    )
    add_config_arguments(parser)
    parser.add_argument("--betas", type=float, nargs="+", help="trade-offs (default: gate.betas)")
    parser.add_argument("--cost", choices=("layers", "gflops"), default="layers")
    parser.add_argument("--quality", choices=("pq", "miou", "sq", "rq", "pq_things", "pq_stuff"), default="pq",
                        help="the per-image quality q_k traded against cost (miou: datasets with semantic labels)")
    parser.set_defaults(func=_depth_labels)


def _build_depth(args) -> int:
    from ecom2f.steps.depth.job import build_depth_dataset

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    print(f"depth table: {build_depth_dataset(load_run_config(args))}")
    return 0


def _depth_labels(args) -> int:
    from ecom2f.steps.depth.job import format_labels_summary, labels_summary, load_depth_table

    config = load_run_config(args)
    rows, _ = load_depth_table(config.storage.layout().depth)
    if rows[args.quality].isna().all():
        from ecom2f.config.errors import ConfigError

        raise ConfigError(f"--quality {args.quality}: the depth table has no {args.quality} values "
                         "(miou needs a dataset with semantic labels); pick another quality")
    summary = labels_summary(rows, args.betas or config.gate.betas, cost=args.cost, exits=config.model.gate.exits,
                             quality=args.quality)
    print(format_labels_summary(summary))
    return 0


def main(argv: list[str] | None = None) -> int:
    """These commands alone, with ``ecom2f``'s handling of bad input (one message, exit status 2)."""
    from ecom2f.errors import UserError

    parser = argparse.ArgumentParser(prog="ecom2f")
    add_commands(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UserError, FileNotFoundError) as error:
        print(f"ecom2f {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
