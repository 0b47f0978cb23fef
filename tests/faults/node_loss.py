"""A node lost in the middle of step 1, on a real two-node Ray cluster on loopback.

Run as ``python -m tests.faults.node_loss RESULT.json RUN_DIR -- TRAIN COMMAND...`` from the
repository root, inside ``unshare --net`` with ``ECOM2F_NETNS=1`` where allowed (see
``tests/cluster/local_cluster.py``: loopback only). It

1. starts a head and a second node (``ray start --address``), 1 CPU each, so that step 1's two
   workers (1 CPU each) run one on each node; the second node's processes are the ones that appear
   when it starts, and later its raylet's children;
2. starts the training command, waits until its metrics show iteration ``KILL_AFTER`` and Ray's
   actor table shows a training worker on each node;
3. SIGKILLs every process of the second node at once (a spot instance reclaimed without notice);
4. starts a third node, as an autoscaler replaces a lost spot node, and waits for the command;
5. always stops every Ray process it started (by pid, as their subreaper).

RESULT.json records the nodes, the workers' nodes before and after, the kill, the command's exit
code and output, and the clean-up.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from tests.cluster.local_cluster import _ray, wait_for_nodes
from tests.cluster.local_head import become_subreaper, bring_loopback_up, free_port, stop_descendants

KILL_AFTER = 3  # iterations done before the node goes
# Faster node-death detection than Ray's defaults (15 s); still tolerant of a loaded 2-core machine.
FAST_HEALTH_CHECKS = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "5",
                      "RAY_health_check_timeout_ms": "2000"}


def _descendants() -> set[int]:
    return {proc.pid for proc in psutil.Process().children(recursive=True)}


def _start_node(gcs: str, env: dict, result: dict) -> set[int]:
    """``ray start --address`` of a 1-CPU node; returns the pids of the processes it left running."""
    before = _descendants()
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--num-gpus", "0",
              "--object-store-memory", str(120 * 1024 * 1024), "--disable-usage-stats"]
    started = _ray("start", "--address", gcs, *common, env=env)
    result.setdefault("starts", []).append({"rc": started.returncode, "tail": (started.stdout + started.stderr)[-1500:]})
    if started.returncode != 0:
        raise RuntimeError("ray start --address failed")
    return _descendants() - before


def _start_head(temp_dir: str, env: dict, result: dict) -> str:
    gcs = f"127.0.0.1:{free_port()}"
    head = _ray("start", "--head", "--port", gcs.split(":")[1], "--include-dashboard", "false",
                "--ray-client-server-port", str(free_port()), "--temp-dir", temp_dir, "--node-ip-address",
                "127.0.0.1", "--num-cpus", "1", "--num-gpus", "0", "--object-store-memory",
                str(120 * 1024 * 1024), "--disable-usage-stats", env=env)
    result["starts"] = [{"rc": head.returncode, "tail": (head.stdout + head.stderr)[-1500:]}]
    if head.returncode != 0:
        raise RuntimeError("ray start --head failed")
    return gcs


def registered_step(run_dir: Path) -> int:
    """The iteration of the newest checkpoint Ray Train has registered (its checkpoint manager's
    snapshot in the run's ``parent/train/``), 0 while there is none."""
    try:
        snapshot = json.loads((run_dir / "parent" / "train" / "checkpoint_manager_snapshot.json").read_text())
        return int(snapshot["latest_checkpoint_result"]["metrics"]["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _worker_nodes() -> list[str]:
    """Node ids of the live Ray Train workers (from the GCS actor table), sorted."""
    import ray._private.state

    return sorted(info["Address"]["NodeID"] for info in ray._private.state.actors(actor_state_name="ALIVE").values()
                  if info["ActorClassName"] == "RayTrainWorker")


def _name(node: str, head: str, second: str) -> str:
    return {head: "head", second: "second"}.get(node, "third")


def _wait(condition, timeout_s: float, what: str, command: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if command.poll() is not None:
            raise RuntimeError(f"the command ended (rc {command.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.2)


def _kill_node(pids: set[int]) -> list[str]:
    """SIGKILL the node's processes and everything they started (its workers), all at once."""
    procs = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            procs += [proc, *proc.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    names = []
    for proc in procs:
        try:
            names.append(proc.name())
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    return sorted(names)


def _run(result: dict, run_dir: Path, command: list[str], temp_dir: str, env: dict) -> int:
    import ray

    gcs = _start_head(temp_dir, env, result)
    second = _start_node(gcs, env, result)
    result["nodes"] = wait_for_nodes(gcs, 2)
    if [node["ip"] for node in result["nodes"]] != ["127.0.0.1", "127.0.0.1"]:
        return 1
    ray.init(address=gcs, log_to_driver=False)
    head_id = ray.get_runtime_context().get_node_id()
    second_id = next(node["NodeID"] for node in ray.nodes() if node["Alive"] and node["NodeID"] != head_id)
    run_dir.parent.mkdir(parents=True, exist_ok=True)  # the storage root: the command makes the run in it
    log = open(run_dir.parent / "command.log", "w")  # noqa: SIM115 (closed below, after the command ends)
    train = subprocess.Popen(command, env={**env, "RAY_ADDRESS": gcs}, stdout=log, stderr=subprocess.STDOUT)
    metric = run_dir / "parent" / "metrics" / f"step_{KILL_AFTER:09d}.json"
    _wait(metric.exists, 400, f"iteration {KILL_AFTER}", train)
    # Ray Train resumes from the newest checkpoint it has *registered* (all ranks' reports collected), not
    # the newest uploaded: wait for one, so that what the test checks is what Ray Train promises.
    _wait(lambda: registered_step(run_dir) > 0, 120, "Ray Train to register a checkpoint", train)
    _wait(lambda: len(_worker_nodes()) == 2, 60, "two training workers in Ray's actor table", train)
    result["workers_before"] = sorted(_name(node, head_id, second_id) for node in _worker_nodes())
    result["registered_at_kill"] = registered_step(run_dir)
    metrics = (run_dir / "parent" / "metrics").glob("step_*.json")
    result["done_at_kill"] = max(int(path.stem.split("_")[1]) for path in metrics)
    result["killed"] = _kill_node(second)
    result["killed_at_s"] = time.monotonic()
    third = _start_node(gcs, env, result)
    result["third_node_processes"] = len(third)

    def restarted() -> bool:
        nodes = _worker_nodes()
        return len(nodes) == 2 and second_id not in nodes

    _wait(restarted, 300, "the workers to restart without the second node", train)
    result["workers_after"] = sorted(_name(node, head_id, second_id) for node in _worker_nodes())
    result["rc"] = train.wait(timeout=400)
    result["restart_s"] = round(time.monotonic() - result.pop("killed_at_s"), 1)
    log.close()
    result["output"] = (run_dir.parent / "command.log").read_text()[-20000:]
    ray.shutdown()
    return 0


def main(result_path: str, run_dir: str, command: list[str]) -> int:
    if os.environ.get("ECOM2F_NETNS") == "1":
        bring_loopback_up()
    become_subreaper()
    temp_dir = tempfile.mkdtemp(prefix="ecom2f-ray-", dir="/tmp")  # short: Ray's unix socket paths
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", **FAST_HEALTH_CHECKS}
    env.pop("RAY_ADDRESS", None)
    result: dict = {}
    start = time.monotonic()
    try:
        return _run(result, Path(run_dir), command, temp_dir, env)
    except Exception as error:  # noqa: BLE001 (recorded for the test, which shows it)
        result["error"] = f"{type(error).__name__}: {error}"
        log = Path(run_dir).parent / "command.log"
        result["output"] = log.read_text()[-20000:] if log.exists() else ""
        return 1
    finally:
        result["stopped_processes"] = stop_descendants()
        result["left_after_stop"] = len(psutil.Process().children(recursive=True))
        result["total_s"] = round(time.monotonic() - start, 1)
        subprocess.run(["rm", "-rf", temp_dir], check=False)
        Path(result_path).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    separator = sys.argv.index("--")
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[separator + 1:]))
