"""Killed processes (issue 17 section 1): real SIGKILLs of Ray processes found in Ray's own state.

- Step 1: a Ray Train worker is killed mid-run; the run resumes from its last checkpoint and
  finishes; no iteration is skipped and at most ``parent.checkpoint_period`` are computed twice.
- Step 2: a Ray Data model actor is killed mid-shard; the job finishes with exactly one row per
  (image, exit), equal to an uninterrupted run's.

(Step 3, the Tune driver killed mid-search and the rerun resuming it: tests/steps/test_gate_tune.py,
``test_a_killed_search_resumes_with_tuner_restore``. A lost node: tests/faults/test_node_loss.py.)
"""

from __future__ import annotations

import io
import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ecom2f import storage
from ecom2f.modeling import build_model
from ecom2f.storage.checksums import digest
from tests.faults.injectors import BlockOnce, BlockOnceAtIndex, alive_actor_pids, pickle_by_value
from tests.steps.conftest import tiny_config


class _Killer(threading.Thread):
    """Waits for ``marker`` (a blocked process's pid), checks that Ray lists that pid as a live actor of
    ``actor_class``, and SIGKILLs it."""

    def __init__(self, marker: Path, actor_class: str, timeout_s: float = 240.0):
        super().__init__(daemon=True)
        self.marker, self.actor_class, self.timeout_s = marker, actor_class, timeout_s
        self.killed: tuple[int, str] | None = None
        self.error: str | None = None

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while not self.marker.exists():
            if time.monotonic() > deadline:
                self.error = f"no process blocked within {self.timeout_s} s"
                return
            time.sleep(0.1)
        pid = int(self.marker.read_text())
        actors = alive_actor_pids(self.actor_class)
        if pid not in actors:
            self.error = f"pid {pid} is not a live {self.actor_class} actor in Ray's actor table: {actors}"
            os.kill(pid, signal.SIGKILL)  # do not leave it sleeping
            return
        os.kill(pid, signal.SIGKILL)
        self.killed = (pid, actors[pid])


@pytest.mark.ray
@pytest.mark.timeout(420)
def test_a_killed_train_worker_resumes_from_its_last_checkpoint(ray_cluster, tiny_data_root, tmp_path):
    from ecom2f.steps.parent import launch_parent_training
    from ecom2f.steps.parent.metrics_log import read_metrics

    config = tiny_config(
        tiny_data_root, tmp_path / "runs", "solver.max_iter=6", "parent.checkpoint_period=2", "parent.log_period=1",
        "parent.keep_last=2", "parent.max_failures=1", "ray.num_workers=2", "ray.cpus_per_worker=0.5",
        "solver.ims_per_batch=4", "solver.lr_schedule.steps=[4]",
    )
    folder = tmp_path / "fault"
    folder.mkdir()
    # Rank 1 stops before iteration 6 (0-based step 5): iterations 1-5 are done, the newest checkpoint is
    # after iteration 4; then it is SIGKILLed.
    pickle_by_value()
    killer = _Killer(folder / "blocked", "RayTrainWorker")
    killer.start()
    result = launch_parent_training(config, fault=BlockOnce(step=5, folder=str(folder), rank=1))
    killer.join(timeout=5)
    assert killer.error is None and killer.killed is not None, killer.error

    started = [tuple(map(int, line.split())) for line in (folder / "steps.log").read_text().splitlines()]
    killed_pid = killer.killed[0]
    before = [step for step, rank, pid in started if pid == killed_pid]
    after_pids = {pid for step, rank, pid in started if rank == 1} - {killed_pid}
    after = [step for step, rank, pid in started if rank == 1 and pid in after_pids]
    assert before == [0, 1, 2, 3, 4, 5] and len(after_pids) == 1  # one restart of the group
    reports = read_metrics(config.storage.layout().parent_metrics)
    assert [r["step"] for r in reports] == [1, 2, 3, 4, 5, 6]  # none skipped
    resumed_from = reports[-1]["resumed_from"]
    assert resumed_from in (2, 4) and after == list(range(resumed_from, 6))  # the resume point is a checkpoint
    repeated = len(before) - 1 - resumed_from  # iterations done before the kill, computed again after it
    assert 0 <= repeated <= config.parent.checkpoint_period
    assert [r["samples_consumed"] for r in reports] == [4 * step for step in range(1, 7)]
    model = build_model(config.model)
    model.load_state_dict(torch.load(result.weights_uri, weights_only=True), strict=True)
    print(f"killed {killer.killed}; resumed from iteration {resumed_from}, {repeated} iteration(s) repeated")


def _random_parent(config, seed: int = 0) -> None:
    """Random weights as the run's parent, with step 1's manifest."""
    from ecom2f.steps.parent.job import write_parent_manifest

    torch.manual_seed(seed)
    buffer = io.BytesIO()
    torch.save(build_model(config.model).state_dict(), buffer)
    layout = config.storage.layout()
    storage.write_bytes(layout.parent_weights, buffer.getvalue())
    write_parent_manifest(layout, digest(buffer.getvalue()), "random")


@pytest.mark.ray
@pytest.mark.timeout(420)
def test_a_killed_depth_actor_loses_nothing(ray_cluster, tiny_data_root, tmp_path):
    from ecom2f.steps.depth.job import build_depth_dataset
    from ecom2f.steps.depth.table import read_finished_depth_table

    config = tiny_config(tiny_data_root, tmp_path / "runs", "depth.shard_size=3", "depth.batch_size=2",
                         "depth.num_actors=1", "depth.gate_feature_grid=2", "gate.grid_sizes=[2]")
    _random_parent(config)
    marker = tmp_path / "blocked"
    pickle_by_value()
    killer = _Killer(marker, "AllExitsModel")
    killer.start()
    build_depth_dataset(config, fault=BlockOnceAtIndex(4, str(marker)))  # shard 1 holds positions 3, 4, 5
    killer.join(timeout=5)
    assert killer.error is None and killer.killed is not None, killer.error

    layout = config.storage.layout()
    table = read_finished_depth_table(layout)  # checks one row per (image, exit) and one feature row per image
    assert len(table) == 8 and table.exits.tolist() == [1, 2, 3, 4, 5, 6]
    assert sorted(table.per_image["dataset_index"].tolist()) == list(range(8))
    assert np.isfinite(table.loss).all()
    manifest = json.loads(storage.read_text(layout.depth_success))
    assert manifest["num_rows"] == 48 and len(manifest["checksums"]) == 6  # 3 shards x (rows, features)
    print(f"killed {killer.killed}")
