"""``ecom2f pipeline``, ``ecom2f evaluate``, ``ecom2f report`` (the same code as ``python -m ray_jobs.*``)."""

from __future__ import annotations

import argparse
import logging

from ecom2f.cli.steps import add_config_arguments, load_run_config

_COMMANDS = {
    "pipeline": (
        "run ECO-M2F end to end: parent -> depth table -> gates -> evaluation -> report",
        "Runs every step whose artifact is missing under <storage>/<run>; a rerun resumes where the last one "
        "stopped. Ends with a short table (fixed depths, oracle, gates) and the report's path.",
    ),
    "evaluate": (
        "evaluate fixed depths, the oracle and the chosen gates on the validation split (Ray Data)",
        "Writes <run>/eval/{per_image,summary}.parquet, summary.json and _SUCCESS.json. Skipped when complete "
        "unless --force.",
    ),
    "report": (
        "write <run>/report/report.md and its plots from the evaluation and the depth table",
        "Needs a complete evaluation; the depth-table plots need a complete depth table.",
    ),
}


def add_commands(subparsers) -> None:
    for name, (summary, description) in _COMMANDS.items():
        parser = subparsers.add_parser(name, help=summary, description=description)
        add_config_arguments(parser)
        if name == "evaluate":
            parser.add_argument("--force", action="store_true", help="rerun even if the evaluation is complete")
        parser.set_defaults(func=_RUNNERS[name])


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")


def _pipeline(args) -> int:
    from ecom2f.steps.pipeline import run_pipeline

    _setup_logging()
    run_pipeline(load_run_config(args))
    return 0


def _evaluate(args) -> int:
    from ecom2f.steps.evaluate.job import evaluate, load_summary
    from ecom2f.steps.pipeline import summary_table

    _setup_logging()
    config = load_run_config(args)
    print(f"evaluation: {evaluate(config, force=args.force)}")
    print(summary_table(load_summary(config)))
    return 0


def _report(args) -> int:
    from ecom2f.report import write_report

    _setup_logging()
    print(f"report: {write_report(load_run_config(args))}")
    return 0


_RUNNERS = {"pipeline": _pipeline, "evaluate": _evaluate, "report": _report}


def run_command(name: str, argv: list[str]) -> int:
    """Entry point of ``ray_jobs/*.py``: one of this module's commands, without the ``ecom2f`` parser
    (works whether or not the module is listed in ``ecom2f.cli.COMMAND_MODULES``)."""
    parser = argparse.ArgumentParser(prog=f"python -m ray_jobs.{name}")
    subparsers = parser.add_subparsers(dest="command")
    add_commands(subparsers)
    args = parser.parse_args([name, *argv])
    return int(args.func(args) or 0)
