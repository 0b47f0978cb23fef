"""The :class:`~ecom2f.steps.parent.session.TrainingSession` of a Ray Train worker."""

from __future__ import annotations

import logging
import shutil
import tempfile

import ray.train
import ray.train.torch
import torch

from ecom2f.steps.parent.metrics_log import MetricsLog
from ecom2f.steps.parent.progress import LEGEND, max_memory_mb, progress_line

log = logging.getLogger(__name__)


def quiet_report_lines() -> None:
    """Raises to WARNING the logger of Ray Train's per-report INFO line ("Reporting training result N:
    TrainingReport(checkpoint=..., metrics={...}) from rank R", every report of every rank), which the
    progress line replaces; its warnings (a slow checkpoint upload) still show.

    Ray 2.60 names that logger after its file (``logging.getLogger(__file__)`` in
    ``ray/train/v2/_internal/execution/context.py``), not under ``ray.train``, so the job's
    ``RunConfig(logging_config=LoggingConfig(log_level="WARNING"))`` does not reach it.
    """
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray: its report lines stay
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


class RayTrainSession:
    """Rank and device from Ray Train; checkpoints through ``ray.train.report``.

    Every rank reports its own checkpoint folder (its DeepSpeed shards); Ray Train merges
    them into one folder in the run's storage, keeps the newest ``num_to_keep`` and hands
    the newest back through ``ray.train.get_checkpoint()`` when a worker group restarts.
    Rank 0 prints one progress line per report (:func:`~ecom2f.steps.parent.progress.progress_line`)
    and keeps the metrics with the run; every report carries the rank's peak memory (``max_mem_mb``).
    """

    def __init__(self, metrics_uri: str | None = None, tensorboard_uri: str | None = None) -> None:
        quiet_report_lines()
        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.device = ray.train.torch.get_device() if torch.cuda.is_available() else torch.device("cpu")
        self._restored: str | None = None
        self._log = MetricsLog(metrics_uri, tensorboard_uri) if metrics_uri and self.rank == 0 else None
        self._legend_printed = False

    def latest_checkpoint(self) -> str | None:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        if self._restored is None:
            self._restored = tempfile.mkdtemp(prefix="ecom2f-restore-")
            checkpoint.to_directory(self._restored)
        return self._restored

    def report(self, metrics: dict, checkpoint_dir: str | None = None) -> None:
        metrics = {**metrics, "max_mem_mb": max_memory_mb(self.device)}
        if self.rank == 0:
            if not self._legend_printed:
                log.info(LEGEND)
                self._legend_printed = True
            log.info(progress_line(metrics))
        if self._log is not None:
            self._log.write(metrics)
            if checkpoint_dir:
                self._log.flush()
        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
        if self._restored is not None:
            shutil.rmtree(self._restored, ignore_errors=True)
