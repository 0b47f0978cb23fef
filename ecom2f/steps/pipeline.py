"""The whole of ECO-M2F in one call: parent -> depth table -> gates -> evaluation -> report.

Each step is skipped when its artifact is complete, so rerunning after an interruption (or
with a step's output deleted) resumes where the run stopped. The pipeline holds the run's lease
(:mod:`ecom2f.storage.lease`) from start to end: a second pipeline or step on the same run
refuses at start, naming this one. A step that has to run while a
later step is complete is refused before any work (the later artifact came from the output
the step would replace); delete the later folders or use another run:

| step | complete when |
|---|---|
| 1 parent (``steps.parent.launch_parent_training``) | ``<run>/parent/model_final.pth`` |
| 2 depth table (``steps.depth.build_depth_dataset``) | ``<run>/depth/_SUCCESS.json`` |
| 3 gates (``steps.gate.tune_gates``) | ``<run>/gates/_SUCCESS.json`` |
| evaluation (``steps.evaluate.evaluate``) | ``<run>/eval/_SUCCESS.json`` |
| report (``ecom2f.report.write_report``) | ``<run>/report/_SUCCESS.json`` |
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from ecom2f import storage
from ecom2f.config import Config
from ecom2f.errors import StaleRunError
from ecom2f.steps.runs import writing_run

log = logging.getLogger(__name__)

__all__ = ["run_pipeline", "PipelineResult", "STEPS", "summary_table"]


def _parent(config: Config) -> None:
    from ecom2f.steps.parent import launch_parent_training

    launch_parent_training(config)


def _depth(config: Config) -> None:
    from ecom2f.steps.depth.job import build_depth_dataset

    build_depth_dataset(config)


def _gates(config: Config) -> None:
    try:  # the agreed name; step 3 may keep it in its Tune module only
        from ecom2f.steps.gate.tune import tune_gates
    except ImportError:
        from ecom2f.steps.gate.tune import tune_gates
    tune_gates(config)


def _evaluate(config: Config) -> None:
    from ecom2f.steps.evaluate.job import evaluate

    evaluate(config)


def _report(config: Config) -> None:
    from ecom2f.report import write_report

    write_report(config)


@dataclass(frozen=True)
class Step:
    name: str
    marker: Callable[[Config], str]  # the artifact whose presence means "complete"
    run: Callable[[Config], None]


STEPS = (
    Step("parent", lambda c: c.storage.layout().parent_weights, _parent),
    Step("depth", lambda c: c.storage.layout().depth_success, _depth),
    Step("gates", lambda c: c.storage.layout().gates_success, _gates),
    Step("evaluate", lambda c: c.storage.layout().eval_success, _evaluate),
    Step("report", lambda c: c.storage.layout().report_success, _report),
)


@dataclass
class PipelineResult:
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    report_uri: str = ""
    table: str = ""


def summary_table(summary: pd.DataFrame) -> str:
    """The short table the pipeline ends with: fixed depths, oracle, gates."""
    shown = summary[summary["kind"].isin(["fixed", "oracle", "gate"])]
    frame = pd.DataFrame({
        "variant": shown["variant"],
        "PQ": (100 * shown["pq"]).round(2),
        # The mean of per-image PQs is what step 3's table estimate measures (dataset PQ is not).
        **({"mean image PQ": (100 * shown["mean_image_pq"]).round(2)} if "mean_image_pq" in shown else {}),
        "mean layers": shown["mean_layers"].round(2),
        "enc GFLOPs": shown["mean_encoder_gflops"].round(4),
        "total GFLOPs": shown["mean_total_gflops"].round(3),
    })
    if "estimate_pq" in shown:
        frame["table est. PQ"] = (100 * shown["estimate_pq"]).round(2)
    return frame.to_string(index=False, na_rep="-")


def _check_no_stale_artifacts(steps: tuple[Step, ...], complete: list[bool], config: Config) -> None:
    """Before any work: a step that will run must not have complete steps after it, whose artifacts
    were made from the output it is about to replace (e.g. gates of a parent trained again)."""
    if all(complete):
        return
    first = complete.index(False)
    stale = [step for step, done in zip(steps[first + 1:], complete[first + 1:]) if done]
    if stale:
        folders = ", ".join(step.marker(config).rsplit("/", 1)[0] for step in stale)  # the artifacts' folders
        raise StaleRunError(
            f"step {steps[first].name} has no artifact ({steps[first].marker(config)}) but the later "
            f"step(s) {[step.name for step in stale]} are complete: they were made from an earlier "
            f"{steps[first].name} and would not match the new one. Delete {folders} to recompute them, "
            f"or use another storage.run"
        )


def run_pipeline(config: Config, steps: tuple[Step, ...] = STEPS, echo: Callable[[str], None] = print) -> PipelineResult:
    """Runs every step whose artifact is missing, in order; prints the summary table at the end.

    ``steps`` exists for tests (stand-in steps); the default is the real pipeline.
    """
    from ecom2f.steps.evaluate.job import absolute_local_paths

    config = absolute_local_paths(config)  # every step's Ray workers see the same folders
    with writing_run(config):  # one lease for the whole pipeline; its steps hold it again, re-entrantly
        return _run_steps(config, steps, echo)


def _run_steps(config: Config, steps: tuple[Step, ...], echo: Callable[[str], None]) -> PipelineResult:
    complete = [storage.exists(step.marker(config)) for step in steps]
    _check_no_stale_artifacts(steps, complete, config)
    result = PipelineResult()
    for step, done in zip(steps, complete):
        marker = step.marker(config)
        if done:
            echo(f"[pipeline] {step.name}: complete ({marker}), skipped")
            result.skipped.append(step.name)
            continue
        echo(f"[pipeline] {step.name}: running")
        start = time.perf_counter()
        step.run(config)
        result.seconds[step.name] = time.perf_counter() - start
        if not storage.exists(marker):
            raise RuntimeError(f"step {step.name} returned but {marker} is missing; the step did not complete")
        echo(f"[pipeline] {step.name}: done in {result.seconds[step.name]:.1f} s")
        result.ran.append(step.name)
    result.report_uri = config.storage.layout().report_markdown
    try:
        from ecom2f.steps.evaluate.job import load_summary

        result.table = summary_table(load_summary(config))
        echo(result.table)
    except FileNotFoundError:
        pass
    echo(f"report: {result.report_uri}")
    return result
