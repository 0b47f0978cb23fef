"""Where a training loop runs: its rank, its checkpoints, where its metrics go.

The loop in :mod:`ecom2f.steps.parent` talks to a :class:`TrainingSession`. Under Ray
Train that is :class:`ecom2f.steps.parent.ray_session.RayTrainSession`; in tests and single-process
runs it is :class:`LocalSession`, which keeps checkpoints in a local folder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Protocol

import torch

CHECKPOINT_PREFIX = "checkpoint_"


class TrainingSession(Protocol):
    rank: int
    world_size: int
    device: torch.device

    def latest_checkpoint(self) -> str | None:
        """A local folder holding the newest complete checkpoint, or None."""

    def report(self, metrics: dict, checkpoint_dir: str | None = None) -> None:
        """Publishes metrics, and with them a checkpoint folder written by this rank."""


class LocalSession:
    """One process; checkpoints under ``root/checkpoint_<step>``, the newest ``keep_last`` kept."""

    def __init__(self, root: str | os.PathLike, keep_last: int = 3, device: str | torch.device = "cpu"):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep_last = keep_last
        self.rank, self.world_size = 0, 1
        self.device = torch.device(device)
        self.reported: list[dict] = []

    def _checkpoints(self) -> list[Path]:
        found = [p for p in self.root.glob(CHECKPOINT_PREFIX + "*") if p.is_dir() and not p.name.endswith(".tmp")]
        return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))

    def latest_checkpoint(self) -> str | None:
        checkpoints = self._checkpoints()
        return str(checkpoints[-1]) if checkpoints else None

    def report(self, metrics: dict, checkpoint_dir: str | None = None) -> None:
        self.reported.append(dict(metrics))
        if checkpoint_dir is None:
            return
        final = self.root / f"{CHECKPOINT_PREFIX}{int(metrics['step']):09d}"
        staging = final.with_name(final.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(checkpoint_dir, staging)
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)  # a checkpoint is visible only once complete
        for old in self._checkpoints()[: -self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)
