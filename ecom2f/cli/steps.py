"""The step commands: ``train-parent``, ``build-depth``, ``depth-labels``, ``tune-gate``, ``evaluate``,
``report`` and ``pipeline``.

Each takes the run's ``--config C [--storage URI] [--run NAME] [KEY=VALUE ...]``
(:mod:`ecom2f.cli.run_config`), calls one function of :mod:`ecom2f.steps` or
:mod:`ecom2f.report`, and prints where its artifact is. ``python -m ray_jobs.<step>`` runs the
same commands. Each command validates its configuration first and only then imports the library
(torch, Ray): a bad key fails in a fraction of a second, and building the parser stays cheap.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from ecom2f.cli.run_config import add_run_config_arguments, load_run_config
from ecom2f.errors import UserError

QUALITIES = ("pq", "miou", "sq", "rq", "pq_things", "pq_stuff")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Adds the seven step commands, in the order a run goes through them."""
    _add_step(subparsers, "train-parent", run_train_parent,
              "step 1: train the early-exit parent with Ray Train + DeepSpeed",
              "Step 1 of ECO-M2F on the Ray cluster in $RAY_ADDRESS (else a local one). Rerunning with the "
              "same storage root and run name resumes from the newest checkpoint.")
    _add_step(subparsers, "build-depth", run_build_depth,
              "step 2: the parent at every exit on every training image -> parquet (Ray Data)",
              "Step 2 of ECO-M2F on the Ray cluster in $RAY_ADDRESS (else a local one): per image and exit "
              "the loss and PQ/SQ/RQ, and the gate features, under <run>/depth/. Rerunning skips complete shards.")
    labels = _add_step(subparsers, "depth-labels", run_depth_labels,
                       "step 2's labels: histogram of the ideal exits and mean depth per beta",
                       "Reads <run>/depth/ and prints, per beta, the share of images whose ideal exit "
                       "argmax_k(q_k - beta * cost_k) is each exit, and the mean depth.")
    labels.add_argument("--betas", type=float, nargs="+", help="trade-offs (default: gate.betas)")
    labels.add_argument("--cost", choices=("layers", "gflops"), default="layers")
    labels.add_argument("--quality", choices=QUALITIES, default="pq",
                        help="the per-image quality q_k traded against cost (miou: datasets with semantic labels)")
    _add_step(subparsers, "tune-gate", run_tune_gate,
              "step 3: search gate designs x beta with Ray Tune on the depth table; save a gate per budget",
              "Step 3 of ECO-M2F on the Ray cluster in $RAY_ADDRESS (else a local one). Reads "
              "<run>/depth/, writes <run>/gates/<budget>/{gate.pt,gate.json}, results.parquet and _SUCCESS.json. "
              "A rerun skips a finished search and resumes an interrupted one.")
    evaluate = _add_step(subparsers, "evaluate", run_evaluate,
                         "evaluate fixed depths, the oracle and the chosen gates on the validation split (Ray Data)",
                         "Writes <run>/eval/{per_image,summary}.parquet, summary.json and _SUCCESS.json. Skipped "
                         "when complete unless --force.")
    evaluate.add_argument("--force", action="store_true", help="rerun even if the evaluation is complete")
    _add_step(subparsers, "report", run_report,
              "write <run>/report/report.md and its plots from the evaluation and the depth table",
              "Needs a complete evaluation; the depth-table plots need a complete depth table.")
    _add_step(subparsers, "pipeline", run_pipeline_command,
              "run ECO-M2F end to end: parent -> depth table -> gates -> evaluation -> report",
              "Runs every step whose artifact is missing under <storage>/<run>; a rerun resumes where the last "
              "one stopped. Ends with a short table (fixed depths, oracle, gates) and the report's path.")


def _add_step(subparsers: argparse._SubParsersAction, name: str, run: Callable[[argparse.Namespace], int],
              summary: str, description: str) -> argparse.ArgumentParser:
    """One step command: its parser with the run-config arguments, ``run`` as what it does."""
    parser = subparsers.add_parser(name, help=summary, description=description)
    add_run_config_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def run_train_parent(args: argparse.Namespace) -> int:
    """Step 1; prints the URI of the trained weights."""
    config = load_run_config(args)
    from ecom2f.steps.parent import launch_parent_training

    result = launch_parent_training(config)
    print(f"parent weights: {result.weights_uri}")
    return 0


def run_build_depth(args: argparse.Namespace) -> int:
    """Step 2; prints the URI of the depth table."""
    config = load_run_config(args)
    from ecom2f.steps.depth.job import build_depth_dataset

    print(f"depth table: {build_depth_dataset(config)}")
    return 0


def run_depth_labels(args: argparse.Namespace) -> int:
    """Prints, per beta, the shares of the ideal exits of the depth table (no Ray)."""
    config = load_run_config(args)
    import numpy as np

    from ecom2f.steps.depth.labels import format_labels_summary, labels_summary
    from ecom2f.steps.depth.table import read_finished_depth_table

    table = read_finished_depth_table(config.storage.layout(), features=False)
    if np.isnan(table.quality(args.quality)).all():
        raise UserError(f"--quality {args.quality}: the depth table has no {args.quality} values "
                        "(miou needs a dataset with semantic labels); pick another quality")
    summary = labels_summary(table, args.betas or config.gate.betas, cost=args.cost, exits=config.model.gate.exits,
                             quality=args.quality)
    print(format_labels_summary(summary))
    return 0


def run_tune_gate(args: argparse.Namespace) -> int:
    """Step 3; prints the URI of the chosen gates."""
    config = load_run_config(args)
    from ecom2f.steps.gate.tune import tune_gates

    print(f"gates: {tune_gates(config)}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    """The evaluation; prints its URI and the summary table."""
    config = load_run_config(args)
    from ecom2f.steps.evaluate.job import evaluate, load_summary
    from ecom2f.steps.pipeline import summary_table

    print(f"evaluation: {evaluate(config, force=args.force)}")
    print(summary_table(load_summary(config)))
    return 0


def run_report(args: argparse.Namespace) -> int:
    """The report; prints the URI of ``report.md``."""
    config = load_run_config(args)
    from ecom2f.report import write_report

    print(f"report: {write_report(config)}")
    return 0


def run_pipeline_command(args: argparse.Namespace) -> int:
    """Every step whose artifact is missing, in order (the pipeline prints its own summary)."""
    config = load_run_config(args)
    from ecom2f.steps.pipeline import run_pipeline

    run_pipeline(config)
    return 0
