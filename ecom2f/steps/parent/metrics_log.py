"""Training metrics kept with the run: one JSON object per report, and TensorBoard events."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile

from ecom2f import storage


class MetricsLog:
    """Writes ``<metrics_uri>/step_<step>.json`` per report, and TensorBoard events under ``tensorboard_uri``.

    One object per step (rather than an appended file) works on S3 too, and a resumed run
    rewrites the steps it repeats. Event files are written locally and uploaded by
    :meth:`flush` (called at checkpoints and at the end).
    """

    def __init__(self, metrics_uri: str, tensorboard_uri: str | None = None):
        self.metrics_uri, self.tensorboard_uri = metrics_uri, tensorboard_uri
        self._local = tempfile.mkdtemp(prefix="ecom2f-tb-") if tensorboard_uri else None
        self._writer = None
        if self._local is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(self._local)

    def write(self, metrics: dict) -> None:
        step = int(metrics["step"])
        storage.write_text(storage.join(self.metrics_uri, f"step_{step:09d}.json"), json.dumps(metrics, sort_keys=True))
        if self._writer is not None:
            for name, value in metrics.items():
                if name != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self._writer.add_scalar(f"parent/{name}", value, step)

    def flush(self) -> None:
        if self._writer is None:
            return
        self._writer.flush()
        for name in os.listdir(self._local):
            storage.upload_file(os.path.join(self._local, name), storage.join(self.tensorboard_uri, name))

    def close(self) -> None:
        self.flush()
        if self._writer is not None:
            self._writer.close()
            shutil.rmtree(self._local, ignore_errors=True)


def read_metrics(folder: str) -> list[dict]:
    """Every report under ``folder`` (a run's ``layout.parent_metrics``), by step."""
    if not storage.exists(folder) and not storage.list_uris(folder):
        return []
    reports = [json.loads(storage.read_text(item)) for item in storage.list_uris(folder) if item.endswith(".json")]
    return sorted(reports, key=lambda m: m["step"])
