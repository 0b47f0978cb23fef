"""Step 1 on a Ray cluster of two nodes refuses a local storage root before any worker starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.cluster.local_head import can_unshare_net
from tests.conftest import REPO_ROOT
from tests.steps.conftest import TINY_OVERRIDES


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_local_storage_root_on_two_nodes_is_refused_with_what_to_set(tmp_path):
    overrides = [*TINY_OVERRIDES, f"data.root={tmp_path / 'datasets'}", "ray.num_workers=2", "ray.cpus_per_worker=1",
                 "solver.ims_per_batch=4", "solver.max_iter=2", "solver.lr_schedule.steps=[1]"]
    command = [sys.executable, "-m", "ecom2f.cli", "train-parent", "--config", "configs/demo_cpu.yaml",
               "--storage", str(tmp_path / "runs"), *overrides]
    result_path = tmp_path / "result.json"
    netns = can_unshare_net()
    env = {**os.environ, "ECOM2F_NETNS": "1" if netns else "0"}
    env.pop("RAY_ADDRESS", None)
    runner = [sys.executable, "-m", "tests.cluster.local_cluster", str(result_path), "2", "1", "--", *command]
    run = subprocess.run(["unshare", "--net", *runner] if netns else runner, cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, timeout=280)
    assert result_path.exists(), run.stderr[-4000:]
    result = json.loads(result_path.read_text())
    assert run.returncode == 0, (result.get("starts"), run.stderr[-4000:])
    assert [node["ip"] for node in result["nodes"]] == ["127.0.0.1", "127.0.0.1"]
    assert result["stopped_processes"] > 0 and result["left_after_stop"] == 0

    failed = result["command"]
    assert failed["rc"] == 2, failed["stderr"][-3000:]
    lines = [line for line in failed["stderr"].splitlines() if line.startswith("ecom2f train-parent: error:")]
    assert len(lines) == 1 and "Traceback" not in failed["stderr"], failed["stderr"][-3000:]
    assert "is a local folder but the Ray cluster has 2 nodes" in lines[0]
    assert "s3://" in lines[0] and "storage.shared_filesystem=true" in lines[0]
    assert not (tmp_path / "runs" / "demo" / "parent" / "train").exists()  # no worker ever started
