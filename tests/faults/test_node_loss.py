"""A node lost mid-run (issue 17 section 1): step 1 on two Ray nodes on loopback, the second node
SIGKILLed after iteration 3 (a spot instance reclaimed without notice), a replacement node joins
(what an autoscaler does): the run restarts from its last checkpoint on the nodes it has and
finishes, no iteration skipped. Slow (a cluster of its own, ~1-2 minutes): marked ``slow``.
Run it alone with ``flock /tmp/ecom2f-ray.lock .venv/bin/python -m pytest tests/faults/test_node_loss.py``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ecom2f.steps.parent.metrics_log import read_metrics
from tests.cluster.local_head import can_unshare_net
from tests.conftest import REPO_ROOT
from tests.steps.conftest import TINY_OVERRIDES


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_lost_node_restarts_the_run_on_the_nodes_left_and_it_finishes(tmp_path, tiny_data_root):
    runs = tmp_path / "runs"
    overrides = [*TINY_OVERRIDES, f"data.root={tiny_data_root}", "ray.num_workers=2", "ray.cpus_per_worker=1",
                 "solver.ims_per_batch=4", "solver.max_iter=6", "solver.lr_schedule.steps=[4]",
                 "parent.checkpoint_period=2", "parent.log_period=1", "parent.keep_last=2", "parent.max_failures=2",
                 # Every node sees this folder (one machine): what NFS/EFS would be on a real cluster.
                 "storage.shared_filesystem=true"]
    command = [sys.executable, "-m", "ecom2f.cli", "train-parent", "--config", "configs/demo_cpu.yaml",
               "--storage", str(runs), *overrides]
    result_path = tmp_path / "result.json"
    netns = can_unshare_net()
    env = {**os.environ, "ECOM2F_NETNS": "1" if netns else "0"}
    env.pop("RAY_ADDRESS", None)
    runner = [sys.executable, "-m", "tests.faults.node_loss", str(result_path), str(runs / "demo"), "--", *command]
    run = subprocess.run(["unshare", "--net", *runner] if netns else runner, cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, timeout=880, check=False)
    assert result_path.exists(), run.stderr[-4000:]
    result = json.loads(result_path.read_text())
    assert run.returncode == 0 and "error" not in result, (result.get("error"), result.get("output", "")[-6000:])
    assert result["stopped_processes"] > 0 and result["left_after_stop"] == 0

    assert result["workers_before"] == ["head", "second"]  # training across both nodes
    assert "raylet" in result["killed"]
    assert result["workers_after"] == ["head", "third"]  # restarted on the nodes it has
    assert result["rc"] == 0, result["output"][-6000:]
    reports = read_metrics(str(runs / "demo" / "parent" / "metrics"))
    assert [r["step"] for r in reports] == [1, 2, 3, 4, 5, 6]  # none skipped
    resumed_from = reports[-1]["resumed_from"]
    # From the newest checkpoint registered when the node went (or a newer one), so at most the
    # iterations since that one are computed again.
    assert resumed_from in (2, 4) and resumed_from >= result["registered_at_kill"] >= 2, (resumed_from, result)
    repeated = result["done_at_kill"] - resumed_from
    assert (runs / "demo" / "parent" / "model_final.pth").exists()
    print(f"node lost after iteration {result['done_at_kill']}; resumed from {resumed_from} ({repeated} repeated); "
          f"restart took "
          f"{result['restart_s']} s; total {result['total_s']} s")
