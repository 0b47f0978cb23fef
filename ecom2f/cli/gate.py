"""``ecom2f tune-gate``: step 3, the gate search (the same code as ``python -m ray_jobs.tune_gate``)."""

from __future__ import annotations

import logging

from ecom2f.cli.steps import add_config_arguments, load_run_config


def add_commands(subparsers) -> None:
    parser = subparsers.add_parser(
        "tune-gate",
        help="step 3: search gate designs x beta with Ray Tune on the depth table; save a gate per budget",
        description="Step 3 of ECO-M2F on the Ray cluster in $RAY_ADDRESS (else a local one). Reads "
        "<run>/depth/, writes <run>/gates/<budget>/{gate.pt,gate.json}, results.parquet and _SUCCESS.json. "
        "A rerun skips a finished search and resumes an interrupted one.",
    )
    add_config_arguments(parser)
    parser.set_defaults(func=_tune_gate)


def _tune_gate(args) -> int:
    from ecom2f.steps.gate.tune import tune_gates

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    gates = tune_gates(load_run_config(args))
    print(f"gates: {gates}")
    return 0
