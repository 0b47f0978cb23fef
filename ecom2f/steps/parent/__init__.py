"""Step 1: the parent, trained so its shared decoder works after any encoder depth."""

from ecom2f.steps.parent.job import launch_parent_training, prepare_parent_run
from ecom2f.steps.parent.objective import build_criterion, normalize_batch
from ecom2f.steps.parent.train import WEIGHTS_FILE, train_parent

__all__ = [
    "WEIGHTS_FILE", "build_criterion", "launch_parent_training", "normalize_batch", "prepare_parent_run",
    "train_parent",
]
