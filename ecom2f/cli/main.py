"""The ``ecom2f`` command.

Each area of the package contributes its subcommands through a module exposing
``add_commands(subparsers)``; every subcommand sets ``func(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ecom2f.errors import UserError

# Modules that add subcommands; a module that is not importable (an optional part not
# built yet, or a missing optional dependency) is skipped, and its error is shown when
# one of its commands would be needed.
COMMAND_MODULES = (
    "ecom2f.cli.data",
    "ecom2f.cli.config",
    "ecom2f.cli.steps",
    "ecom2f.cli.depth",
    "ecom2f.cli.gate",
    "ecom2f.cli.pipeline",
    "ecom2f.cli.submit",
    "ecom2f.cli.evaluation",
    "ecom2f.cli.model",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ecom2f",
        description="ECO-M2F on Ray: train early-exit Mask2Former parents, build depth datasets, tune gates.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name and name.startswith(error.name):
                continue  # that part of the package does not exist in this build
            raise
        module.add_commands(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as error:
        print(f"ecom2f {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
