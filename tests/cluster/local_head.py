"""A real local Ray head with its dashboard, driven through ``ecom2f submit``.

Run as ``python -m tests.cluster.local_head RESULT.json ARTIFACT_DIR`` from the repository
root, ideally inside a private network namespace (``unshare --net``: only a loopback
interface exists there, so nothing Ray starts can listen beyond loopback; Ray's gRPC
servers bind every interface of their namespace). It:

1. starts ``ray start --head`` (dashboard and every Ray address on 127.0.0.1, 1 CPU,
   free ports, its own temp dir), as a child subreaper so every Ray process it spawns
   stays its descendant;
2. submits ``ecom2f data synth ARTIFACT_DIR/synth ...`` with ``ecom2f submit --wait``
   (the command's own code path: runtime env file, entrypoint check, Jobs API), then a
   job that fails (``ecom2f data check`` of a missing folder);
3. submits a probe job with the same runtime environment that reports where ``ecom2f``
   and its compiled op were imported from (the working-dir copy vs. the installed op);
4. records the listening sockets of the Ray processes; and always stops the head by
   killing exactly its own descendants (never ``ray stop``, which stops every Ray
   process on the machine).

The result JSON holds the job ids, statuses, logs, the probe's report and the sockets.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

# Reports where the job's driver, and a Ray worker it starts, import ecom2f and its op from.
PROBE = (
    "import json, os, ray, ecom2f, ecom2f.ops.extension as e; "
    "where = lambda: (__import__('ecom2f').__file__, "
    "__import__('ecom2f.ops.extension', fromlist=['e']).library_path(), os.getpid()); "
    "ray.init(); worker = ray.get(ray.remote(num_cpus=1)(where).remote()); "
    "print('PROBE ' + json.dumps({'ecom2f': ecom2f.__file__, 'op': e.library_path(), "
    "'cpu_kernel': e.has_kernel('cpu'), 'cwd': os.getcwd(), 'v2': os.environ.get('RAY_TRAIN_V2_ENABLED'), "
    "'pid': os.getpid(), 'worker_ecom2f': worker[0], 'worker_op': worker[1], 'worker_pid': worker[2]}))"
)


def can_unshare_net() -> bool:
    """Whether ``unshare --net`` works here (root or user namespaces); ECOM2F_TEST_NETNS=0 tests the fallback."""
    if os.environ.get("ECOM2F_TEST_NETNS") == "0" or not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode == 0


def bring_loopback_up() -> None:
    """``ip link set lo up`` without the ip tool (a fresh network namespace starts with lo down)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        request = struct.pack("16sH14s", b"lo", 0, b"")
        flags = struct.unpack("16sH14s", fcntl.ioctl(sock, 0x8913, request))[1]  # SIOCGIFFLAGS
        fcntl.ioctl(sock, 0x8914, struct.pack("16sH14s", b"lo", flags | 0x1, b""))  # SIOCSIFFLAGS, IFF_UP
    finally:
        sock.close()


def become_subreaper() -> None:
    """Orphaned descendants (``ray start`` daemonises its processes) re-parent to us, not init."""
    PR_SET_CHILD_SUBREAPER = 36
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening_sockets() -> list[list]:
    """(process name, ip, port) of every listening socket of our descendants."""
    found = set()
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    found.add((proc.name(), conn.laddr.ip, conn.laddr.port))
    return sorted(list(item) for item in found)


def stop_descendants(grace_s: float = 10.0) -> int:
    """SIGTERM, then SIGKILL, to every descendant of this process, by pid."""
    procs = psutil.Process().children(recursive=True)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=grace_s)
    return len(procs)


def run_submit_cli(argv: list[str]) -> tuple[int, str]:
    """``ecom2f submit ARGV`` in this process (ecom2f's own entry point), stdout captured."""
    from ecom2f.cli import main as ecom2f_main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = ecom2f_main(["submit", *argv])
    return code, out.getvalue()


# Distinctive fake credentials in the environment of the head and of `ecom2f submit`: none may
# appear in a job's logs, the artifacts or Ray's session logs (tests/faults covers the steps).
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "AKIAECOM2FSUBMITTRIPWIRE",
    "AWS_SECRET_ACCESS_KEY": "ecom2f-submit-secret-tripwire-0123456789abcdef",
    "AWS_SESSION_TOKEN": "ecom2f-submit-session-tripwire-token",
}


def credential_hits(client, job_ids: list[str], folders: list[str]) -> dict:
    """Where the fake credentials appear: job logs, then every file under ``folders``."""
    secrets = [value.encode() for value in FAKE_CREDENTIALS.values()]
    hits, files = [], 0
    for job_id in job_ids:
        logs = client.get_job_logs(job_id).encode()
        hits += [f"job {job_id} logs" for secret in secrets if secret in logs]
    for folder in folders:
        for path in Path(folder).rglob("*"):
            if path.is_file() and not path.is_symlink():
                files += 1
                with contextlib.suppress(OSError):
                    data = path.read_bytes()
                    hits += [str(path) for secret in secrets if secret in data]
    return {"hits": sorted(set(hits)), "files": files, "jobs": len(job_ids)}


def main(result_path: str, artifact_dir: str, in_namespace: bool) -> int:
    if in_namespace:
        bring_loopback_up()
    become_subreaper()
    temp_dir = tempfile.mkdtemp(prefix="ecom2f-ray-", dir="/tmp")  # short: Ray's unix socket paths
    dashboard_port = free_port()
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        # The job's `ecom2f` and `python` are this environment's, as the image's are on PATH there.
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
        **FAKE_CREDENTIALS,
    }
    env.pop("RAY_ADDRESS", None)
    result: dict = {"in_namespace": in_namespace}
    start = time.monotonic()
    try:
        started = subprocess.run(
            [os.path.join(os.path.dirname(sys.executable), "ray"), "start", "--head",
             "--node-ip-address", "127.0.0.1", "--port", str(free_port()),
             "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port), "--include-dashboard", "true",
             "--ray-client-server-port", str(free_port()), "--num-cpus", "1", "--num-gpus", "0",
             "--object-store-memory", str(200 * 1024 * 1024), "--temp-dir", temp_dir, "--disable-usage-stats"],
            env=env, capture_output=True, text=True, timeout=120,
        )
        result["ray_start"] = {"rc": started.returncode, "tail": (started.stdout + started.stderr)[-3000:]}
        if started.returncode != 0:
            return 1
        result["start_s"] = round(time.monotonic() - start, 1)
        os.environ.update({k: env[k] for k in ("RAY_AUTH_MODE", "PATH", *FAKE_CREDENTIALS)})
        address = f"http://127.0.0.1:{dashboard_port}"
        os.environ["RAY_ADDRESS"] = address  # the CLI's default, as a user would set it

        synth_dir = os.path.join(artifact_dir, "synth")
        code, output = run_submit_cli(
            ["--wait", "--timeout", "150", "--", "data", "synth", synth_dir, "--num-images", "3", "--image-size", "48",
             "--seed", "7"]
        )
        result["synth"] = {"rc": code, "output": output, "s": round(time.monotonic() - start, 1)}

        # A job that fails on the cluster: the CLI reports it and exits 1.
        code, failing_output = run_submit_cli(["--wait", "--timeout", "120", "--", "data", "check",
                                               os.path.join(artifact_dir, "missing"), "--format", "coco_panoptic"])
        result["failing"] = {"rc": code, "output": failing_output}

        from ray.job_submission import JobSubmissionClient

        from ecom2f.submit import load_runtime_env, wait_for_job

        client = JobSubmissionClient(address)
        probe_id = client.submit_job(entrypoint=f'python -c "{PROBE}"', runtime_env=load_runtime_env())
        status = wait_for_job(client, probe_id, timeout_s=120)
        result["probe"] = {"id": probe_id, "status": status, "logs": client.get_job_logs(probe_id)}
        synth_id = next(line.split()[2].rstrip(":") for line in output.splitlines() if line.startswith("submitted job"))
        result["synth"]["listed"] = {job.submission_id: str(job.status).rsplit(".", 1)[-1] for job in client.list_jobs()}
        result["synth"]["id"] = synth_id
        result["listening"] = listening_sockets()
        failing_id = next(line.split()[2].rstrip(":") for line in failing_output.splitlines()
                          if line.startswith("submitted job"))
        result["credentials"] = credential_hits(client, [synth_id, failing_id, probe_id],
                                                [artifact_dir, os.path.join(temp_dir, "session_latest", "logs")])
        return 0
    finally:
        result["stopped_processes"] = stop_descendants()
        result["left_after_stop"] = len(psutil.Process().children(recursive=True))
        result["total_s"] = round(time.monotonic() - start, 1)
        shutil.rmtree(temp_dir, ignore_errors=True)
        Path(result_path).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], os.environ.get("ECOM2F_NETNS") == "1"))
