"""The ``ecom2f`` command: the one entry point of every step and tool.

``ecom2f``, ``python -m ecom2f``, ``python -m ecom2f.cli`` and every ``python -m ray_jobs.<step>``
call :func:`main`, which, like detectron2's ``default_argument_parser`` + ``default_setup``:

1. builds one parser from :data:`COMMAND_MODULES` (each module adds its commands with
   ``add_commands(subparsers)``; every command sets ``func(args) -> exit status``);
2. sets up logging once, for every command (INFO and up, to stderr);
3. runs the command, and reports a :class:`~ecom2f.errors.UserError` (bad configuration,
   missing earlier step, bad storage URI, bad dataset, ...) as ONE line on stderr,
   ``ecom2f <command>: error: <message>``, with exit status 2 and no traceback. Any other
   exception is a bug or an environment failure and keeps its traceback.

The command modules are imported here unconditionally: a module that does not import is a
bug and fails every command, instead of its commands silently disappearing. They import the
library only inside their commands, so building the parser stays cheap.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ecom2f.cli import config, convert, data, model_flops, pq, predict, serve, steps, submit
from ecom2f.errors import UserError

# The order of the commands in ``ecom2f --help``: the steps of a run, then the tools.
STEP_COMMANDS = (steps,)
TOOL_COMMANDS = (config, data, submit, model_flops, pq, predict, serve, convert)
COMMAND_MODULES = STEP_COMMANDS + TOOL_COMMANDS

LOG_FORMAT = "%(asctime)s %(name)s: %(message)s"
EXIT_USER_ERROR = 2  # argparse's status for a bad command line; a bad configuration is the same kind of mistake


def build_parser() -> argparse.ArgumentParser:
    """The parser of every ``ecom2f`` command (``ecom2f submit`` checks commands with it too)."""
    parser = argparse.ArgumentParser(
        prog="ecom2f",
        description="ECO-M2F on Ray: train early-exit Mask2Former parents, build depth datasets, tune gates.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.add_commands(subparsers)
    _record_command_names(parser)
    for subparser in _subparsers(parser):
        subparser.formatter_class = HelpFormatter
    # `ecom2f submit` checks the command it sends with this parser; a default is how it gets it
    # without importing this module (which imports it).
    parser.set_defaults(ecom2f_parser=parser)
    return parser


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, with each flag's default after its help (``(default: 200)``) unless the
    help already says it; flags without a default (None, off switches) show none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (default in (None, False, argparse.SUPPRESS, []) or not action.option_strings
                or "default" in text or isinstance(action, argparse._HelpAction)):
            return text
        return f"{text} (default: %(default)s)"


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every parser below ``parser`` (commands, then their subcommands), depth first."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                found += [subparser, *_subparsers(subparser)]
    return found


def _record_command_names(parser: argparse.ArgumentParser) -> None:
    """Gives every (sub)command the default ``command_name``, e.g. ``"ecom2f config show"``: the
    prefix of its error line. A subcommand's defaults override its parent's, so the deepest wins."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                subparser.set_defaults(command_name=subparser.prog)
                _record_command_names(subparser)


def setup_logging() -> None:
    """INFO and up from every logger to stderr, with time and logger name; once per process
    (a second call, or a host that configured logging first, changes nothing)."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)


def one_line(message: str) -> str:
    """``message`` on one line: lines are joined; a list of ``- item`` lines (a configuration's
    problems) becomes ``(1) item (2) item`` so the items stay apart.

    ``"invalid configuration (c.yaml):\\n  - a: bad\\n  - b: bad"`` ->
    ``"invalid configuration (c.yaml): (1) a: bad (2) b: bad"``.
    """
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    items = [line for line in lines if line.startswith("- ")]
    parts, number = [], 0
    for line in lines:
        if line.startswith("- ") and len(items) > 1:
            number += 1
            line = f"({number}) {line[2:]}"
        elif line.startswith("- "):
            line = line[2:]
        parts.append(line)
    return " ".join(parts)


def main(argv: list[str] | None = None) -> int:
    """Runs the command ``argv`` (default: ``sys.argv[1:]``) and returns its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return EXIT_USER_ERROR
    setup_logging()
    try:
        return int(args.func(args) or 0)
    except UserError as error:
        print(f"{args.command_name}: error: {one_line(str(error))}", file=sys.stderr)
        return EXIT_USER_ERROR
