"""Where a run keeps its artifacts, and the name of every one of them.

Every module that reads or writes an artifact of a run asks :class:`RunLayout` for its URI;
no other module spells an artifact's name. ``_SUCCESS.json`` marks a step complete: it is
written last, after everything else of the step.

    <root>/<run>/
      config.yaml                      the resolved configuration
      _LEASE.json                      the lease of the job writing the run (storage/lease.py)
      parent/model_final.pth           step 1: the parent's fp32 weights
      parent/_SUCCESS.json             step 1: its manifest (the weights' checksum), written last
      parent/train/checkpoint_*/       step 1: Ray Train checkpoints
      parent/metrics/, tensorboard/    step 1: training metrics
      depth/                           step 2: the depth table (rows/, features/), _SUCCESS.json
      gates/tune/                      step 3: Ray Tune's experiment
      gates/results.parquet, picks.parquet, reference.parquet, <budget>/{gate.pt, gate.json}, _SUCCESS.json
      eval/per_image.parquet, summary.{parquet,json}, _SUCCESS.json
      report/report.md, *.png, _SUCCESS.json
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ecom2f.storage.files import is_s3, join

SUCCESS = "_SUCCESS.json"
LEASE = "_LEASE.json"
PARENT_WEIGHTS = "model_final.pth"
PARENT_CLASSES = "classes.json"  # the classes' names and things, when a run was converted from a checkpoint
GATE_WEIGHTS = "gate.pt"
GATE_METADATA = "gate.json"
# Beside a trial's gate files in each Ray Tune checkpoint: what resumes the trial exactly.
GATE_TRAINING_STATE = "training_state.pt"


@dataclasses.dataclass(frozen=True)
class RunLayout:
    """Where a run keeps its artifacts: ``<root>/<run>/{config.yaml, parent/, depth/, gates/, eval/, report/}``."""

    root: str
    run: str

    SUBDIRECTORIES = ("parent", "depth", "gates", "eval", "report")

    def __post_init__(self) -> None:
        if not self.run or "/" in self.run or self.run in (".", ".."):
            raise ValueError(f"run name {self.run!r}: must be a non-empty name without '/' (e.g. 'coco_r50_parent')")

    # ----------------------------------------------------------------- folders
    @property
    def run_uri(self) -> str:
        return join(self.root, self.run)

    @property
    def parent(self) -> str:
        return join(self.run_uri, "parent")

    @property
    def depth(self) -> str:
        return join(self.run_uri, "depth")

    @property
    def gates(self) -> str:
        return join(self.run_uri, "gates")

    @property
    def eval(self) -> str:
        return join(self.run_uri, "eval")

    @property
    def report(self) -> str:
        return join(self.run_uri, "report")

    # ----------------------------------------------------------------- the run
    @property
    def config(self) -> str:
        return join(self.run_uri, "config.yaml")

    @property
    def lease(self) -> str:
        """The lease of the one job that writes the run (:mod:`ecom2f.storage.lease`)."""
        return join(self.run_uri, LEASE)

    # ----------------------------------------------------------------- step 1
    @property
    def parent_weights(self) -> str:
        return join(self.parent, PARENT_WEIGHTS)

    @property
    def parent_classes(self) -> str:
        """The parent's class names and thing ids (:class:`ecom2f.modeling.class_info.ClassInfo`),
        written when the run was made from a checkpoint that names its classes (``ecom2f convert``)."""
        return join(self.parent, PARENT_CLASSES)

    @property
    def parent_success(self) -> str:
        """Step 1's manifest, written after the weights: their checksum, the checkpoint they came from."""
        return join(self.parent, SUCCESS)

    @property
    def parent_train_name(self) -> str:
        """Ray Train's run name; its folder ``parent/train/`` holds the checkpoints."""
        return "train"

    @property
    def parent_metrics(self) -> str:
        return join(self.parent, "metrics")

    @property
    def parent_tensorboard(self) -> str:
        return join(self.parent, "tensorboard")

    # ----------------------------------------------------------------- step 2
    @property
    def depth_success(self) -> str:
        return join(self.depth, SUCCESS)

    # ----------------------------------------------------------------- step 3
    @property
    def gates_tune_name(self) -> str:
        """Ray Tune's experiment name; its folder ``gates/tune/`` holds the trials."""
        return "tune"

    @property
    def gates_results(self) -> str:
        return join(self.gates, "results.parquet")

    @property
    def gates_picks(self) -> str:
        return join(self.gates, "picks.parquet")

    @property
    def gates_reference(self) -> str:
        """Fixed depths and the oracle on the gates' validation images, scored from the table."""
        return join(self.gates, "reference.parquet")

    @property
    def gates_success(self) -> str:
        return join(self.gates, SUCCESS)

    def gate(self, budget_name: str) -> str:
        """The folder of the gate chosen for one compute budget (see :func:`gate_files`)."""
        return join(self.gates, budget_name)

    # ----------------------------------------------------------------- evaluation
    @property
    def eval_per_image(self) -> str:
        return join(self.eval, "per_image.parquet")

    @property
    def eval_summary(self) -> str:
        return join(self.eval, "summary.parquet")

    @property
    def eval_summary_json(self) -> str:
        return join(self.eval, "summary.json")

    @property
    def eval_success(self) -> str:
        return join(self.eval, SUCCESS)

    # ----------------------------------------------------------------- report
    @property
    def report_markdown(self) -> str:
        return join(self.report, "report.md")

    def report_figure(self, name: str) -> str:
        return join(self.report, f"{name}.png")

    @property
    def report_success(self) -> str:
        return join(self.report, SUCCESS)

    def create(self) -> None:
        """Create the local directories (S3 needs none: prefixes exist once written to)."""
        if is_s3(self.root):
            return
        for name in self.SUBDIRECTORIES:
            Path(join(self.run_uri, name)).mkdir(parents=True, exist_ok=True)


def gate_files(gate_dir: str) -> tuple[str, str]:
    """``(weights, metadata)`` URIs of a chosen gate's folder."""
    return join(gate_dir, GATE_WEIGHTS), join(gate_dir, GATE_METADATA)
