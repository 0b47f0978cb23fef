"""One writer per run (issue 17 section 3): the run lease on local paths and on S3 (moto), with real
processes as holders: refusal naming the holder, heartbeat, expiry, a crashed holder taken over,
--force-unlock, release at the end and on failure; and two jobs on one run through the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ecom2f import storage
from ecom2f.storage.errors import RunLockedError
from ecom2f.storage.lease import FORCE_ENV, TTL_ENV, RunLease
from tests.conftest import REPO_ROOT
from tests.steps.conftest import TINY_OVERRIDES

# A child process that takes the lease, says so, and holds it (heartbeat running) until killed.
HOLDER = """
import os, sys, time, logging
logging.basicConfig(level=logging.INFO)
from ecom2f.storage.lease import RunLease
lease = RunLease.acquire(sys.argv[1], job_id=sys.argv[2])
print("HELD", lease.version, flush=True)
time.sleep(float(sys.argv[3]))
lost = lease.lost
lease.release()
print("LOST" if lost else "RELEASED", flush=True)
"""


def _holder(uri: str, job_id: str, hold_s: float = 120.0, ttl_s: float = 60.0) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", HOLDER, uri, job_id, str(hold_s)], cwd=REPO_ROOT,
                             env={**os.environ, TTL_ENV: str(ttl_s)}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    line = child.stdout.readline()
    assert line.startswith("HELD"), (line, child.stderr.read() if child.poll() is not None else "")
    return child


def _lease_uri(kind: str, tmp_path: Path, bucket: str | None) -> str:
    return f"{bucket}/runs/demo/_LEASE.json" if kind == "s3" else str(tmp_path / "runs" / "demo" / "_LEASE.json")


@pytest.fixture(params=["local", "s3"])
def lease_uri(request, tmp_path):
    bucket = request.getfixturevalue("s3_bucket") if request.param == "s3" else None
    return _lease_uri(request.param, tmp_path, bucket)


def test_a_second_job_refuses_naming_the_holder_and_a_killed_holder_is_taken_over(lease_uri):
    holder = _holder(lease_uri, "job-A")
    try:
        saved = json.loads(storage.read_text(lease_uri))
        assert saved["job_id"] == "job-A" and saved["pid"] == holder.pid and saved["host"] and saved["started"]
        with pytest.raises(RunLockedError) as refused:
            RunLease.acquire(lease_uri)
        message = str(refused.value)
        assert "\n" not in message and "job-A" in message and f"pid {holder.pid}" in message
        assert saved["host"] in message and "--force-unlock" in message and "wait for that job" in message
    finally:
        holder.send_signal(signal.SIGKILL)  # crashes: no release, the lease stays behind
        holder.wait()
    assert json.loads(storage.read_text(lease_uri))["pid"] == holder.pid
    # Same machine, its process gone: taken over at once, without waiting for the expiry.
    lease = RunLease.acquire(lease_uri, job_id="job-B")
    try:
        assert json.loads(storage.read_text(lease_uri))["job_id"] == "job-B"
    finally:
        lease.release()
    assert not storage.exists(lease_uri)


def test_a_holder_elsewhere_is_taken_over_only_after_its_lease_expires(lease_uri, monkeypatch):
    """A holder on another machine (its pid means nothing here) that stopped renewing: refused while
    the lease is younger than its time to live, taken over once older (the storage's clock)."""
    elsewhere = {"host": "spot-node-7", "pid": 4242, "job_id": "job-far", "started": "2026-01-01T00:00:00+00:00",
                 "renewed": "2026-01-01T00:00:00+00:00", "ttl_s": 2.0, "token": "0" * 32,
                 "pid_namespace": "pid:[1]", "pid_start": "1"}
    storage.write_text(lease_uri, json.dumps(elsewhere))
    with pytest.raises(RunLockedError, match="job-far.*spot-node-7"):
        RunLease.acquire(lease_uri)
    time.sleep(3.2)  # S3's LastModified and Date have whole seconds
    lease = RunLease.acquire(lease_uri, job_id="job-near")
    try:
        assert json.loads(storage.read_text(lease_uri))["job_id"] == "job-near"
    finally:
        lease.release()


def test_the_heartbeat_keeps_a_lease_alive_past_its_ttl(lease_uri):
    # A TTL of seconds, not fractions: on a loaded 2-core machine the other process's start and a
    # starved heartbeat thread must not look like an expired holder.
    lease = RunLease.acquire(lease_uri, ttl_s=2.0, job_id="job-alive")
    try:
        first = json.loads(storage.read_text(lease_uri))
        time.sleep(4.5)  # over 2 TTLs: without renewal it would have expired
        renewed = json.loads(storage.read_text(lease_uri))
        assert renewed["token"] == first["token"] and renewed["renewed"] > first["renewed"]
        with pytest.raises(RunLockedError, match="job-alive"):
            _acquire_as_if_elsewhere(lease_uri)
        assert not lease.lost
    finally:
        lease.release()


def _acquire_as_if_elsewhere(uri: str) -> None:
    """Another process's attempt (a live holder in this very process would be re-entrant in open_run)."""
    script = "import sys\nfrom ecom2f.storage.lease import RunLease\nRunLease.acquire(sys.argv[1])"
    result = subprocess.run([sys.executable, "-c", script, uri], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise RunLockedError(result.stderr.strip().splitlines()[-1])


def test_force_unlock_takes_a_live_lease_and_the_old_holder_finds_out(lease_uri, monkeypatch):
    holder = _holder(lease_uri, "job-stuck", hold_s=2.5, ttl_s=0.4)
    monkeypatch.setenv(FORCE_ENV, "1")
    lease = RunLease.acquire(lease_uri, job_id="job-forced")
    try:
        output, errors = holder.communicate(timeout=60)
        assert "LOST" in output, errors[-2000:]
        assert "lost the lease" in errors and "job-forced" in errors
        # The old holder's exit did not delete the new holder's lease.
        assert json.loads(storage.read_text(lease_uri))["job_id"] == "job-forced"
    finally:
        lease.release()


def test_s3_server_honours_conditional_puts(s3_server, s3_bucket):
    """The lease's atomicity rests on these: moto answers 412 to a PUT with If-None-Match: * on an
    existing key and to one with a stale If-Match ETag, as S3 does."""
    from botocore.exceptions import ClientError

    client = s3_server.client()
    bucket = s3_bucket.removeprefix("s3://")
    first = client.put_object(Bucket=bucket, Key="lease", Body=b"a", IfNoneMatch="*")
    with pytest.raises(ClientError) as refused:
        client.put_object(Bucket=bucket, Key="lease", Body=b"b", IfNoneMatch="*")
    assert refused.value.response["Error"]["Code"] == "PreconditionFailed"
    second = client.put_object(Bucket=bucket, Key="lease", Body=b"c", IfMatch=first["ETag"])
    with pytest.raises(ClientError) as stale:
        client.put_object(Bucket=bucket, Key="lease", Body=b"d", IfMatch=first["ETag"])
    assert stale.value.response["Error"]["Code"] == "PreconditionFailed"
    assert client.get_object(Bucket=bucket, Key="lease")["Body"].read() == b"c" and second["ETag"] != first["ETag"]


def test_racing_creators_on_s3(s3_server, s3_bucket):
    """Many threads create the same lease at once. S3 lets exactly one conditional PUT win; moto
    checks and writes without a lock, so under a true race it may let more than one through: this
    records what the loopback server does (docs/reliability.md) rather than assuming it."""
    from botocore.exceptions import ClientError

    bucket = s3_bucket.removeprefix("s3://")
    clients = [s3_server.client() for _ in range(8)]
    barrier, wins = threading.Barrier(len(clients)), []

    def create(client, index):
        barrier.wait()
        try:
            client.put_object(Bucket=bucket, Key="race", Body=str(index).encode(), IfNoneMatch="*")
            wins.append(index)
        except ClientError as error:
            assert error.response["Error"]["Code"] == "PreconditionFailed"

    threads = [threading.Thread(target=create, args=(c, i)) for i, c in enumerate(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(wins) >= 1
    winner = int(clients[0].get_object(Bucket=bucket, Key="race")["Body"].read())
    assert winner in wins
    print(f"moto conditional-create race: {len(wins)} of {len(clients)} PUTs succeeded")


def test_a_job_releases_the_run_on_success_and_on_failure(tmp_path, tiny_data_root):
    from ecom2f.steps.runs import open_run, writing_run
    from tests.steps.conftest import tiny_config

    config = tiny_config(tiny_data_root, tmp_path / "runs")
    layout = config.storage.layout()
    with writing_run(config):
        assert json.loads(Path(layout.lease).read_text())["pid"] == os.getpid()
        with writing_run(config):  # re-entrant: a pipeline and its steps
            pass
        assert Path(layout.lease).exists()
    assert not Path(layout.lease).exists()
    with pytest.raises(ZeroDivisionError), writing_run(config):
        raise ZeroDivisionError
    assert not Path(layout.lease).exists()
    # A job that dies of an exception in its own process releases through atexit (what open_run holds).
    script = ("import sys\nfrom ecom2f.storage.lease import hold\nhold(sys.argv[1])\n"
              "raise RuntimeError('boom')")
    result = subprocess.run([sys.executable, "-c", script, layout.lease], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode != 0 and "boom" in result.stderr
    assert not Path(layout.lease).exists()
    # open_run (what every job calls) holds it until close_run.
    open_run(config)
    assert json.loads(Path(layout.lease).read_text())["pid"] == os.getpid()
    from ecom2f.steps.runs import close_run

    close_run(config)
    assert not Path(layout.lease).exists()


def test_two_jobs_on_one_run_the_second_refuses_at_start(tmp_path, tiny_data_root):
    """The issue's report: two `make demo` a few minutes apart both trained into runs/demo. Now the
    second command stops before any work with one line naming the first and what to do."""
    runs = tmp_path / "runs"
    holder = _holder(str(runs / "demo" / "_LEASE.json"), "first-demo")
    try:
        result = subprocess.run(
            [sys.executable, "-m", "ecom2f.cli", "train-parent", "--config", "configs/demo_cpu.yaml",
             "--storage", str(runs), *TINY_OVERRIDES, f"data.root={tiny_data_root}"],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("ecom2f train-parent: error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "first-demo" in lines[0] and f"pid {holder.pid}" in lines[0] and "--force-unlock" in lines[0]
    assert "Started a local Ray instance" not in result.stderr + result.stdout
    assert not (runs / "demo" / "config.yaml").exists()  # refused before writing anything


def test_force_unlock_on_the_command_line_takes_the_run_over(tmp_path, tiny_data_root):
    """``--force-unlock`` reaches the lease: the command takes the run from a live holder (which finds out
    at its next heartbeat) and goes on to its own checks; here one that fails cheaply after the lease
    (8 training images, fewer than one global batch of 16) so that no training starts."""
    runs = tmp_path / "runs"
    lease_uri = str(runs / "demo" / "_LEASE.json")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, lease_uri, "stuck-demo", "30"], cwd=REPO_ROOT,
                              env={**os.environ, TTL_ENV: "0.4"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().startswith("HELD")
    try:
        result = subprocess.run(
            [sys.executable, "-m", "ecom2f.cli", "train-parent", "--force-unlock", "--config", "configs/demo_cpu.yaml",
             "--storage", str(runs), *TINY_OVERRIDES, f"data.root={tiny_data_root}", "solver.ims_per_batch=16",
             "ray.num_workers=1"],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False)
        time.sleep(1.0)  # the old holder's next heartbeat (every 0.1 s) finds the lease taken
        assert holder.poll() is None
    finally:
        holder.send_signal(signal.SIGTERM)
        _, errors = holder.communicate(timeout=30)
    lines = [line for line in result.stderr.splitlines() if line.startswith("ecom2f train-parent: error:")]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
    assert "fewer than one global batch" in lines[0] and "in use by another job" not in result.stderr
    assert "took over the lease" in result.stderr and "--force-unlock" in result.stderr
    assert "lost the lease" in errors  # the old holder knows
    assert not Path(lease_uri).exists()  # released by the forcing command at its end
    assert not (runs / "demo" / "config.yaml").exists()  # refused before saving the configuration


def test_a_lone_report_refuses_while_another_job_writes_the_run(tmp_path, tiny_data_root):
    """`ecom2f report` writes <run>/report/: it takes the lease as the steps do."""
    runs = tmp_path / "runs"
    holder = _holder(str(runs / "demo" / "_LEASE.json"), "pipeline-still-running")
    try:
        result = subprocess.run(
            [sys.executable, "-m", "ecom2f.cli", "report", "--config", "configs/demo_cpu.yaml", "--storage", str(runs),
             *TINY_OVERRIDES, f"data.root={tiny_data_root}"],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lines = [line for line in result.stderr.splitlines() if line.startswith("ecom2f report: error:")]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
    assert "pipeline-still-running" in lines[0] and "--force-unlock" in lines[0]
    report = runs / "demo" / "report"
    assert not report.exists() or not any(report.iterdir())  # nothing written
