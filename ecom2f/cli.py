"""The ``ecom2f`` command.

Each area of the package contributes its subcommands through a module exposing
``add_commands(subparsers)``; every subcommand sets ``func(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules that add subcommands; a module that is not importable (an optional part not
# built yet, or a missing optional dependency) is skipped, and its error is shown when
# one of its commands would be needed.
COMMAND_MODULES = (
    "ecom2f.ops.cli",
    "ecom2f.data.cli",
    "ecom2f.config_cli",
    "ecom2f.steps.cli",
    "ecom2f.steps.depth_cli",
    "ecom2f.steps.gate_cli",
    "ecom2f.steps.pipeline_cli",
    "ecom2f.submit_cli",
    "ecom2f.evaluation.cli",
    "ecom2f.modeling.cli",
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


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that describe bad input (config, storage, data): shown as one message, no traceback."""
    from ecom2f.config_errors import ConfigError
    from ecom2f.data.problems import DataProblemError, TooManyBadSamplesError
    from ecom2f.storage_errors import StorageError

    return ConfigError, StorageError, DataProblemError, TooManyBadSamplesError


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except _user_errors() as error:
        print(f"ecom2f {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
