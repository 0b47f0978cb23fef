"""The step commands: ``train-parent``, ``build-depth``, ``depth-labels``, ``tune-gate``, ``evaluate``,
``report`` and ``pipeline``.

Each takes the run's ``[--config C] [--storage URI] [--run NAME|RUN] [KEY=VALUE ...]``
(:mod:`ecom2f.cli.run_config`: ``--run runs/demo`` alone reads the configuration that run saved),
calls one function of :mod:`ecom2f.steps` or :mod:`ecom2f.report`, and prints where its artifact
is. ``python -m ray_jobs.<step>`` runs the same commands. Each command validates its arguments and
configuration first (``validate``, which ``ecom2f submit`` also calls before uploading anything) and
only then imports the library (torch, Ray): a bad key fails in a fraction of a second, and building
the parser stays cheap. A command refused before it did any work leaves no new run folder behind
(:mod:`ecom2f.cli.fresh_run`).
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable

from ecom2f.cli.fresh_run import removed_if_refused
from ecom2f.cli.known_warnings import silence_harmless_warnings
from ecom2f.cli.run_config import add_run_config_arguments, load_run_config
from ecom2f.errors import BadInputError, UserError

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
                       "argmax_k(q_k - beta * cost_k) is each exit, and the mean depth.", writes=False)
    labels.add_argument("--betas", type=float, nargs="+", metavar="BETA",
                        help="trade-offs beta >= 0, quality given up per unit of cost (default: the run's gate.betas)")
    labels.add_argument("--cost", choices=("layers", "gflops"), default="layers",
                        help="cost_k: encoder layers, or the image's encoder GFLOPs at exit k")
    labels.add_argument("--quality", choices=QUALITIES, default="pq",
                        help="the per-image quality q_k traded against cost (miou: datasets with semantic labels)")
    labels.set_defaults(validate=validate_depth_labels)
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
              summary: str, description: str, writes: bool = True) -> argparse.ArgumentParser:
    """One step command: its parser with the run-config arguments, ``run`` as what it does; a command
    that ``writes`` the run takes its lease (``ecom2f.storage.lease``) and gets ``--force-unlock``."""
    parser = subparsers.add_parser(name, help=summary, description=description)
    add_run_config_arguments(parser)
    if writes:
        parser.add_argument("--force-unlock", action="store_true",
                            help="take over the run's lease even though another job holds it: only when that job "
                                 "is known to be gone (its machine was lost) and its lease has not expired yet; "
                                 "two live jobs would both write the run (docs/reliability.md)")
        run = _forcing_unlock(run)
    parser.set_defaults(func=run, validate=load_run_config)
    return parser


def _forcing_unlock(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``run`` with ``--force-unlock`` passed on to the lease, through the environment (as
    ``ECOM2F_FORCE_UNLOCK=1`` would), so the steps of a pipeline see it too."""

    def command(args: argparse.Namespace) -> int:
        if getattr(args, "force_unlock", False):
            from ecom2f.storage.lease import FORCE_ENV

            os.environ[FORCE_ENV] = "1"
        return run(args)

    command.__doc__ = run.__doc__
    return command


def _start_ray_step(args: argparse.Namespace):
    """The validated configuration of a step that starts Ray, with Ray's known harmless warnings off."""
    config = args.validate(args)
    silence_harmless_warnings(config)
    return config


def validate_depth_labels(args: argparse.Namespace):
    """``--betas`` and the configuration, before the depth table is read."""
    for beta in args.betas or ():
        if not (math.isfinite(beta) and beta >= 0):
            raise BadInputError(f"--betas {beta:g}: a trade-off must be a finite number >= 0 (the quality given up "
                                "per unit of cost), e.g. --betas 0 0.01 0.05")
    return load_run_config(args)


def run_train_parent(args: argparse.Namespace) -> int:
    """Step 1; prints the URI of the trained weights."""
    config = _start_ray_step(args)
    from ecom2f.steps.parent import launch_parent_training

    with removed_if_refused(config):
        result = launch_parent_training(config)
    print(f"parent weights: {result.weights_uri}")
    return 0


def run_build_depth(args: argparse.Namespace) -> int:
    """Step 2; prints the URI of the depth table."""
    config = _start_ray_step(args)
    from ecom2f.steps.depth.job import build_depth_dataset

    with removed_if_refused(config):
        print(f"depth table: {build_depth_dataset(config)}")
    return 0


def run_depth_labels(args: argparse.Namespace) -> int:
    """Prints, per beta, the shares of the ideal exits of the depth table (no Ray)."""
    config = args.validate(args)
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
    config = _start_ray_step(args)
    from ecom2f.steps.gate.tune import tune_gates

    with removed_if_refused(config):
        print(f"gates: {tune_gates(config)}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    """The evaluation; prints its URI and the summary table."""
    config = _start_ray_step(args)
    from ecom2f.steps.evaluate.job import evaluate, load_summary
    from ecom2f.steps.pipeline import summary_table

    with removed_if_refused(config):
        print(f"evaluation: {evaluate(config, force=args.force)}")
    print(summary_table(load_summary(config)))
    return 0


def run_report(args: argparse.Namespace) -> int:
    """The report; prints the URI of ``report.md``."""
    config = args.validate(args)
    from ecom2f.report import write_report
    from ecom2f.steps.runs import writing_run

    with removed_if_refused(config), writing_run(config):  # one writer per run: it holds the run's lease
        print(f"report: {write_report(config)}")
    return 0


def run_pipeline_command(args: argparse.Namespace) -> int:
    """Every step whose artifact is missing, in order (the pipeline prints its own summary)."""
    config = _start_ray_step(args)
    from ecom2f.steps.pipeline import run_pipeline

    with removed_if_refused(config):
        run_pipeline(config)
    return 0
