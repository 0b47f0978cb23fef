"""A real Ray cluster of several nodes on this machine, all on loopback, around one command.

Run as ``python -m tests.cluster.local_cluster RESULT.json NODES CPUS_PER_NODE -- COMMAND...``
(from the repository root), inside ``unshare --net`` with ``ECOM2F_NETNS=1`` where allowed:
Ray advertises the machine's network address even when told 127.0.0.1, and in a private
network namespace loopback is the only one there is. It starts ``ray start --head`` and ``NODES - 1`` more nodes with
``ray start --address`` (every address on 127.0.0.1, each node its own CPUs), checks that
``ray.nodes()`` lists exactly those nodes, all on 127.0.0.1, runs COMMAND with
``RAY_ADDRESS`` pointing at the head, and always stops every Ray process it started (it is
their subreaper; never ``ray stop``, which would stop every Ray process on the machine).
RESULT.json records the command's exit code and output, the nodes, and the clean-up.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from tests.cluster.local_head import become_subreaper, bring_loopback_up, free_port, stop_descendants


def _ray(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([os.path.join(os.path.dirname(sys.executable), "ray"), *args], env=env,
                          capture_output=True, text=True, timeout=120)


def start_nodes(nodes: int, cpus: int, temp_dir: str, env: dict, result: dict) -> str:
    """The head's GCS address, once ``nodes`` nodes are up; raises if one does not start."""
    gcs = f"127.0.0.1:{free_port()}"
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", str(cpus), "--num-gpus", "0",
              "--object-store-memory", str(150 * 1024 * 1024), "--disable-usage-stats"]
    head = _ray("start", "--head", "--port", gcs.split(":")[1], "--include-dashboard", "false",
                "--ray-client-server-port", str(free_port()), "--temp-dir", temp_dir, *common, env=env)
    result["starts"] = [{"rc": head.returncode, "tail": (head.stdout + head.stderr)[-2000:]}]
    if head.returncode != 0:
        raise RuntimeError("ray start --head failed")
    for _ in range(nodes - 1):
        worker = _ray("start", "--address", gcs, *common, env=env)
        result["starts"].append({"rc": worker.returncode, "tail": (worker.stdout + worker.stderr)[-2000:]})
        if worker.returncode != 0:
            raise RuntimeError("ray start --address failed")
    return gcs


def wait_for_nodes(gcs: str, nodes: int, timeout_s: float = 60.0) -> list[dict]:
    import ray

    ray.init(address=gcs, log_to_driver=False)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            alive = [n for n in ray.nodes() if n["Alive"]]
            if len(alive) >= nodes or time.monotonic() > deadline:
                return [{"ip": n["NodeManagerAddress"], "cpus": n["Resources"].get("CPU", 0)} for n in alive]
            time.sleep(0.5)
    finally:
        ray.shutdown()


def main(result_path: str, nodes: int, cpus: int, command: list[str]) -> int:
    if os.environ.get("ECOM2F_NETNS") == "1":
        bring_loopback_up()
    become_subreaper()
    temp_dir = tempfile.mkdtemp(prefix="ecom2f-ray-", dir="/tmp")  # short: Ray's unix socket paths
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    result: dict = {}
    start = time.monotonic()
    try:
        gcs = start_nodes(nodes, cpus, temp_dir, env, result)
        result["nodes"] = wait_for_nodes(gcs, nodes)
        if len(result["nodes"]) != nodes or any(node["ip"] != "127.0.0.1" for node in result["nodes"]):
            return 1
        run = subprocess.run(command, env={**env, "RAY_ADDRESS": gcs}, capture_output=True, text=True, timeout=600)
        result["command"] = {"rc": run.returncode, "stdout": run.stdout[-20000:], "stderr": run.stderr[-20000:]}
        return 0
    finally:
        result["stopped_processes"] = stop_descendants()
        result["left_after_stop"] = len(psutil.Process().children(recursive=True))
        result["total_s"] = round(time.monotonic() - start, 1)
        shutil.rmtree(temp_dir, ignore_errors=True)
        Path(result_path).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    separator = sys.argv.index("--")
    sys.exit(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[separator + 1:]))
