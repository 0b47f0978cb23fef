"""``ecom2f submit`` against a real local Ray head with its dashboard on loopback.

The head runs in a private network namespace when ``unshare --net`` is allowed (root or
user namespaces): only a loopback interface exists there, so nothing can listen beyond
loopback, whatever Ray binds. Without it the test still runs, binding every address
flag to 127.0.0.1, and checks the dashboard (the Jobs API) listens on loopback only.
Run it under the Ray lock: flock /tmp/ecom2f-ray.lock .venv/bin/python -m pytest tests/cluster -q
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from tests.cluster.local_head import can_unshare_net
from tests.conftest import REPO_ROOT


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    if address.version == 6 and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.is_loopback


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_submit_to_a_local_head_runs_the_job_with_working_dir_code_and_installed_op(tmp_path):
    netns = can_unshare_net()
    result_path, artifacts = tmp_path / "result.json", tmp_path / "artifacts"
    artifacts.mkdir()
    command = [sys.executable, "-m", "tests.cluster.local_head", str(result_path), str(artifacts)]
    env = {**os.environ, "ECOM2F_NETNS": "1" if netns else "0"}
    env.pop("RAY_ADDRESS", None)
    run = subprocess.run(["unshare", "--net", *command] if netns else command, cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, timeout=280)
    assert result_path.exists(), run.stderr[-4000:]
    result = json.loads(result_path.read_text())
    assert run.returncode == 0, (result.get("ray_start"), run.stderr[-4000:])

    # The head it started is gone: every one of its processes was stopped, none is left.
    assert result["stopped_processes"] > 0 and result["left_after_stop"] == 0

    # 1. `ecom2f submit --wait -- data synth ...`: the job id and how to follow/stop it are
    # printed, the logs streamed, the job succeeded and wrote its artifacts here.
    synth = result["synth"]
    assert synth["rc"] == 0, synth["output"]
    job_id = synth["id"]
    address_line = next(line for line in synth["output"].splitlines() if "stop it:" in line)
    assert f"ray job stop --address http://127.0.0.1:" in address_line and address_line.endswith(job_id)
    assert f"ray job logs --address http://127.0.0.1:" in synth["output"] and f"--follow {job_id}" in synth["output"]
    assert f"Running entrypoint for job {job_id}: ecom2f data synth {artifacts}/synth" in synth["output"]
    assert f"wrote 3 images and {artifacts}/synth/panoptic.json" in synth["output"]
    assert synth["output"].rstrip().endswith(f"job {job_id}: SUCCEEDED")
    assert synth["listed"][job_id] == "SUCCEEDED"
    panoptic = json.loads((artifacts / "synth" / "panoptic.json").read_text())
    assert len(panoptic["images"]) == len(panoptic["annotations"]) == 3
    for image in panoptic["images"]:
        with Image.open(artifacts / "synth" / "images" / image["file_name"]) as picture:
            assert picture.size == (48, 48)

    # A job that fails there is reported as failed, with its own error in the logs.
    failing = result["failing"]
    assert failing["rc"] == 1, failing["output"]
    assert f"{artifacts}/missing" in failing["output"] and failing["output"].rstrip().endswith(": FAILED")
    failing_id = next(line.split()[2].rstrip(":") for line in failing["output"].splitlines()
                      if line.startswith("submitted job"))
    assert f"error: dataset folder {artifacts}/missing does not exist" in failing["output"]
    assert result["synth"]["listed"][failing_id] == "FAILED"

    # The fake AWS credentials in the environment of the head and of `ecom2f submit` appear in no
    # job log, no artifact and no Ray session log.
    credentials = result["credentials"]
    assert credentials["jobs"] == 3 and credentials["files"] > 10, credentials
    assert credentials["hits"] == [], credentials["hits"]

    # 2. The runtime environment's split: code from the uploaded working dir, the compiled
    # op (excluded from the upload as *.so) from the installed package, as on the image.
    probe = result["probe"]
    assert probe["status"] == "SUCCEEDED", probe["logs"]
    report = json.loads(next(line[6:] for line in probe["logs"].splitlines() if line.startswith("PROBE ")))
    assert "/runtime_resources/working_dir_files/_ray_pkg_" in report["ecom2f"]
    assert report["ecom2f"].startswith(report["cwd"])
    assert report["op"] == str(next((REPO_ROOT / "ecom2f").glob("_C*.so"))) and report["cpu_kernel"] is True
    assert report["v2"] == "1"  # env_vars of cluster/runtime_env.yaml reached the job
    # The same in a Ray worker process of the job, where the model runs on a cluster.
    assert report["worker_pid"] != report["pid"]
    assert "/runtime_resources/working_dir_files/_ray_pkg_" in report["worker_ecom2f"]
    assert report["worker_op"] == report["op"]

    # 3. Nothing listens beyond loopback: every socket in the namespace, or (without one)
    # the dashboard with its Jobs API.
    listening = result["listening"]
    assert listening
    checked = listening if netns else [s for s in listening if s[2] == int(address_line.split(":")[-1].split()[0])]
    assert checked and all(_loopback(ip) for _, ip, _ in checked), checked
