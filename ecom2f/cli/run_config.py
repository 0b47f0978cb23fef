"""The arguments every step command shares, ``--config C [--storage URI] [--run NAME] [KEY=VALUE ...]``,
and the run configuration they name."""

from __future__ import annotations

import argparse


def add_run_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds ``--config`` (required), ``--storage``, ``--run`` and the positional dot-path overrides."""
    parser.add_argument("--config", required=True, help="run configuration YAML (see configs/)")
    parser.add_argument("--storage", help="artifact root: a local folder or s3://bucket/prefix (storage.root)")
    parser.add_argument("--run", help="run name under the storage root (storage.run)")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE",
        help="dot-path overrides of the configuration, e.g. solver.base_lr=2e-4 ray.num_workers=4",
    )


def run_config_overrides(args: argparse.Namespace) -> list[str]:
    """The overrides in the order they apply: the positional ones, then ``--storage`` and ``--run``
    (so the flags win over a ``storage.root=`` given among the overrides)."""
    overrides = list(args.overrides)
    if args.storage:
        overrides.append(f"storage.root={args.storage}")
    if args.run:
        overrides.append(f"storage.run={args.run}")
    return overrides


def load_run_config(args: argparse.Namespace):
    """The validated :class:`ecom2f.config.Config` of a step command's arguments.

    Raises :class:`ecom2f.config.ConfigError` (a ``UserError``: one line, exit status 2) naming
    every bad key or value.
    """
    from ecom2f.config import load_config

    return load_config(args.config, run_config_overrides(args))
