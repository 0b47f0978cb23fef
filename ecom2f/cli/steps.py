"""``ecom2f train-parent``: the steps as commands (the same code as ``python -m ray_jobs.*``)."""

from __future__ import annotations

import argparse
import logging


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="run configuration YAML (see configs/)")
    parser.add_argument("--storage", help="artifact root: a local folder or s3://bucket/prefix (storage.root)")
    parser.add_argument("--run", help="run name under the storage root (storage.run)")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE",
        help="dot-path overrides of the configuration, e.g. solver.base_lr=2e-4 ray.num_workers=4",
    )


def load_run_config(args):
    from ecom2f.config import load_config

    overrides = list(args.overrides)
    if args.storage:
        overrides.append(f"storage.root={args.storage}")
    if args.run:
        overrides.append(f"storage.run={args.run}")
    return load_config(args.config, overrides)


def add_commands(subparsers) -> None:
    parser = subparsers.add_parser(
        "train-parent",
        help="step 1: train the early-exit parent with Ray Train + DeepSpeed",
        description="Step 1 of ECO-M2F on the Ray cluster in $RAY_ADDRESS (else a local one). Rerunning with the "
        "same storage root and run name resumes from the newest checkpoint.",
    )
    add_config_arguments(parser)
    parser.set_defaults(func=_train_parent)


def _train_parent(args) -> int:
    from ecom2f.steps.parent import launch_parent_training

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    result = launch_parent_training(load_run_config(args))
    print(f"parent weights: {result.weights_uri}")
    return 0
