"""S3 outages (issue 17 section 2) and secrets (section 5), on one run of every step.

The run's S3 endpoint is an :class:`~tests.faults.s3_outage.OutageServer`: moto, taken down in the
middle of step 1's checkpoint upload, of step 2's shard writes and of step 3's gate export. Each
time the job fails after the bounded retries of ``storage.max_attempts`` with one line naming the
endpoint and the object, nothing half-written is taken for an artifact, and once the server is
back a rerun completes with the same artifacts as an uninterrupted run. The jobs run with
distinctive fake AWS credentials in their environment; at the end every artifact, log, saved
configuration, manifest, TensorBoard event and job log is searched for them.
"""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ecom2f import storage
from ecom2f.errors import UserError
from ecom2f.storage.errors import StorageConnectionError
from tests.conftest import REPO_ROOT
from tests.faults.s3_outage import OutageServer
from tests.steps.conftest import TINY_OVERRIDES, tiny_config

pytestmark = [pytest.mark.ray]

# Distinctive fake credentials for the jobs' environment (moto accepts any); none may appear anywhere.
SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAH17TRIPWIRE4KEYID",
    "AWS_SECRET_ACCESS_KEY": "h17Tripwire/Secret+Key/9f3c1e7a5b2d4c6e8a0b",
    "AWS_SESSION_TOKEN": "h17TripwireSessionToken//FQoGZXIvYXdzEJr",
}
# The session's Ray workers got the session server's pair (tests/infra/s3_server.py): searched for too.
from tests.infra.s3_server import SECRET_ACCESS_KEY as WORKER_SECRET

TRIPWIRES = [*SECRETS.values(), WORKER_SECRET]

STEPS = [
    "storage.max_attempts=2", "storage.retry_mode=standard", "storage.run=outage",
    "solver.max_iter=4", "parent.checkpoint_period=2", "parent.keep_last=2", "parent.log_period=1",
    # No restart of the worker group: each would fail the same way while S3 is down (the failure then
    # comes after parent.max_failures + 1 attempts of storage.max_attempts requests each).
    "parent.max_failures=0", "ray.num_workers=1", "ray.cpus_per_worker=0.5", "solver.ims_per_batch=2",
    "solver.lr_schedule.steps=[3]",
    # Shards of whole batches: a resumed step 2 batches the images it recomputes as the first run did.
    "depth.shard_size=4", "depth.batch_size=2", "depth.num_actors=1", "depth.gate_feature_grid=2",
    "gate.grid_sizes=[2]", "gate.num_samples=1", "gate.betas=[0.0]", "gate.epochs=2", "gate.compute_budgets=[]",
    "gate.holdout_fraction=0.25", "gate.batch_size=4", "evaluation.num_actors=1",
]


class Scenario:
    def __init__(self, server: OutageServer, bucket: str, address: str, data_root: Path, log_file: Path):
        self.server, self.bucket, self.address, self.data_root, self.log_file = (
            server, bucket, address, data_root, log_file)
        self.outputs: list[str] = []  # error lines and job logs, searched for the credentials at the end
        self.started = time.time()

    def config(self, *overrides: str):
        return tiny_config(self.data_root, f"s3://{self.bucket}/runs", *STEPS, f"ray.address={self.address}",
                           *overrides)

    def fails_in_one_line(self, error: BaseException, object_part: str) -> str:
        message = str(error)
        self.outputs.append(message)
        assert isinstance(error, UserError) and "\n" not in message, message
        assert self.server.endpoint_url in message and f"s3://{self.bucket}/" in message, message
        assert object_part in message, message
        return message


@pytest.fixture(scope="module")
def scenario(ray_cluster, tiny_data_root, tmp_path_factory):
    """The outage server as the jobs' endpoint, the fake credentials in the environment (after the
    session's Ray cluster started), and every log record of the module kept in a file."""
    server = OutageServer()
    server.start()
    bucket = "ecom2f-outage"
    server.client().create_bucket(Bucket=bucket)
    log_file = tmp_path_factory.mktemp("logs") / "module.log"
    handler = logging.FileHandler(log_file)
    handler.setLevel(logging.INFO)
    logging.getLogger().addHandler(handler)
    address = ray_cluster.get_runtime_context().gcs_address
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ENDPOINT_URL", server.endpoint_url)
        for name, value in SECRETS.items():
            patch.setenv(name, value)
        yield Scenario(server, bucket, address, tiny_data_root, log_file)
    logging.getLogger().removeHandler(handler)
    server.stop()


class _SecondCheckpoint:
    """True for the first PUT into a step-1 checkpoint folder other than the first one uploaded."""

    def __init__(self) -> None:
        self.first: str | None = None

    def __call__(self, method: str, path: str) -> bool:
        found = re.search(r"/parent/train/(checkpoint_[^/]+)/.", path)
        if method != "PUT" or not found:
            return False
        self.first = self.first or found[1]
        return found[1] != self.first


def _local_reference_weights(config, tmp_path: Path) -> dict:
    """Step 1's loop without Ray, uninterrupted, in this process (one thread, like the Ray worker)."""
    from ecom2f.steps.datasets import training_dataset
    from ecom2f.steps.parent import train_parent
    from ecom2f.steps.parent.session import LocalSession
    from tests import distributed

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with distributed.single_process_group():
            session = LocalSession(tmp_path / "reference")
            train_parent(config, session, training_dataset(config))
    finally:
        torch.set_num_threads(threads)
    return torch.load(f"{session.latest_checkpoint()}/model_final.pth", weights_only=True)


@pytest.mark.timeout(600)
def test_step1_outage_during_a_checkpoint_upload(scenario, tmp_path):
    from ecom2f.steps.parent import launch_parent_training
    from ecom2f.steps.parent.job import read_parent_weights
    from ecom2f.steps.parent.metrics_log import read_metrics
    from ecom2f.steps.parent.state import checkpoint_problems

    config = scenario.config()
    layout = config.storage.layout()
    scenario.server.stop_when(_SecondCheckpoint())
    start = time.monotonic()
    with pytest.raises(StorageConnectionError) as failed:
        launch_parent_training(config)
    seconds = time.monotonic() - start
    assert scenario.server.triggered.is_set()
    # Named: the checkpoint file, or (Ray Train's truncated traceback keeps only its last error, the
    # storage marker it checks before each upload) the checkpoints' folder.
    message = scenario.fails_in_one_line(failed.value, f"{layout.parent}/train/")
    assert "/parent/train/checkpoint_" in message or "a checkpoint under" in message, message
    assert "storage.max_attempts" in message and "rerun the same command" in message
    print(f"step 1 failed after {seconds:.1f} s: {message}")
    scenario.server.start()
    assert not storage.exists(layout.parent_weights)
    result = launch_parent_training(config)
    reports = read_metrics(layout.parent_metrics)
    assert [r["step"] for r in reports] == [1, 2, 3, 4] and [r["resumed_from"] for r in reports[2:]] == [2, 2]
    # Nothing half-written stayed: the folder the outage cut short is gone, the kept checkpoints are whole.
    folders = [uri for uri in storage.list_uris(storage.join(layout.parent, "train"))
               if uri.endswith("/") and uri.rstrip("/").rsplit("/", 1)[-1].startswith("checkpoint_")]
    assert len(folders) == config.parent.keep_last, folders
    for folder in folders:
        local = tmp_path / folder.rstrip("/").rsplit("/", 1)[-1]
        storage.download_dir(folder, local)
        assert checkpoint_problems(str(local)) == [], folder
    # The same weights as an uninterrupted run.
    weights = torch.load(io.BytesIO(read_parent_weights(layout)), weights_only=True)
    reference = _local_reference_weights(config.model_copy(update={"storage": config.storage.model_copy(
        update={"root": str(tmp_path / "runs")})}), tmp_path)
    assert weights.keys() == reference.keys()
    for name, value in reference.items():
        assert torch.equal(weights[name], value), name
    print(f"step 1 resumed and finished: {result.weights_uri}")


@pytest.mark.timeout(600)
def test_step2_outage_during_shard_writes(scenario):
    from ecom2f.errors import MissingStepError
    from ecom2f.steps.depth.job import build_depth_dataset
    from ecom2f.steps.depth.table import read_depth_table, read_finished_depth_table, shard_uri

    config = scenario.config()
    layout = config.storage.layout()
    assert storage.exists(layout.parent_weights), "needs step 1 of this module"
    # An uninterrupted step 2 on the same parent, in a run of its own.
    reference = scenario.config("storage.run=reference")
    for name in ("parent_weights", "parent_success"):
        storage.write_bytes(getattr(reference.storage.layout(), name), storage.read_bytes(getattr(layout, name)))
    build_depth_dataset(reference)

    scenario.server.stop_after("PUT", r"/depth/features/part-00001\.parquet$")
    with pytest.raises(StorageConnectionError) as failed:
        build_depth_dataset(config)
    print("step 2 failed:", scenario.fails_in_one_line(failed.value, "/depth/rows/part-00001.parquet"))
    scenario.server.start()
    depth = layout.depth
    assert storage.exists(shard_uri(depth, "features", 1)) and not storage.exists(shard_uri(depth, "rows", 1))
    with pytest.raises(MissingStepError, match="not finished"):  # the later steps see no table yet
        read_finished_depth_table(layout)
    first_shard = storage.read_bytes(shard_uri(depth, "rows", 0))

    build_depth_dataset(config)
    assert storage.read_bytes(shard_uri(depth, "rows", 0)) == first_shard  # finished shards are not redone
    table, expected = read_finished_depth_table(layout), read_depth_table(reference.storage.layout().depth)
    assert len(table) == 8 and table.exits.tolist() == [1, 2, 3, 4, 5, 6]  # one row per (image, exit), checked
    np.testing.assert_array_equal(table.image_ids, expected.image_ids)
    for name, values in expected.per_exit.items():
        np.testing.assert_array_equal(table.per_exit[name], values, err_msg=name)
    np.testing.assert_array_equal(table.features("grid"), expected.features("grid"))


@pytest.mark.timeout(600)
def test_step3_outage_during_the_gate_export(scenario):
    from ecom2f.steps.evaluate.job import chosen_gate_dirs
    from ecom2f.steps.gate.store import load_gate
    from ecom2f.steps.gate.tune import tune_gates

    config = scenario.config()
    layout = config.storage.layout()
    scenario.server.stop_after("PUT", r"/gates/beta_0/gate\.pt$")
    with pytest.raises(StorageConnectionError) as failed:
        tune_gates(config)
    print("step 3 failed:", scenario.fails_in_one_line(failed.value, "/gates/beta_0/gate.json"))
    scenario.server.start()
    assert storage.exists(storage.join(layout.gate("beta_0"), "gate.pt"))
    assert not storage.exists(layout.gates_success) and chosen_gate_dirs(config) == {}  # the half gate is no gate

    tune_gates(config)  # the finished search is restored, its gate written again
    manifest = json.loads(storage.read_text(layout.gates_success))
    assert sorted(manifest["gates"]) == ["beta_0"] and "beta_0/gate.pt" in manifest["checksums"]
    assert chosen_gate_dirs(config) == {"beta_0": layout.gate("beta_0")}
    _, meta = load_gate(layout.gate("beta_0"), {name: manifest["checksums"][f"beta_0/{name}"]
                                                   for name in ("gate.pt", "gate.json")})
    assert meta["trial_id"] == manifest["gates"]["beta_0"]["trial_id"]


@pytest.mark.timeout(600)
def test_evaluation_and_report_then_no_credentials_anywhere(scenario, tmp_path):
    """The rest of the run through the CLI (its output is the job log), then the search."""
    config = scenario.config()
    layout = config.storage.layout()
    overrides = [*TINY_OVERRIDES, f"data.root={scenario.data_root}", *STEPS, f"ray.address={scenario.address}"]
    run = subprocess.run([sys.executable, "-m", "ecom2f.cli", "pipeline", "--config", "configs/demo_cpu.yaml",
                          "--storage", f"s3://{scenario.bucket}/runs", *overrides],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=500, check=False)
    scenario.outputs += [run.stdout, run.stderr]
    assert run.returncode == 0, run.stderr[-4000:]
    assert "[pipeline] evaluate: running" in run.stdout and "[pipeline] gates: complete" in run.stdout
    assert storage.exists(layout.report_success) and storage.exists(layout.eval_success)
    if importlib.util.find_spec("ecom2f.steps.predict") is not None:  # issue 14's command, where it exists
        predict = subprocess.run(
            [sys.executable, "-m", "ecom2f.cli", "predict", "--config", "configs/demo_cpu.yaml", "--storage",
             f"s3://{scenario.bucket}/runs", *overrides, "--input", str(scenario.data_root / "synthetic" / "val" /
                                                                        "images"),
             "--output", f"s3://{scenario.bucket}/predictions"],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False)
        scenario.outputs += [predict.stdout, predict.stderr]
        assert predict.returncode == 0, predict.stderr[-4000:]
        assert storage.list_uris(f"s3://{scenario.bucket}/predictions")

    found = _search_everything(scenario, tmp_path)
    assert found["objects"] > 50 and found["log_files"] > 0, found
    assert found["hits"] == [], found["hits"]


def _hits(name: str, data: bytes) -> list[str]:
    return [f"{name}: {secret[:8]}..." for secret in TRIPWIRES if secret.encode() in data]


def _search_everything(scenario: Scenario, tmp_path: Path) -> dict:
    """Every object in the bucket (artifacts, configs, manifests, TensorBoard events, checkpoints, Tune's
    files, the lease), this module's log records, the job logs and error lines, and Ray's session logs."""
    client = scenario.server.client()
    hits, objects = [], 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=scenario.bucket):
        for item in page.get("Contents", []):
            objects += 1
            body = client.get_object(Bucket=scenario.bucket, Key=item["Key"])["Body"].read()
            hits += _hits(f"s3://{scenario.bucket}/{item['Key']}", body)
    hits += _hits("log records", scenario.log_file.read_bytes())
    hits += _hits("job logs and errors", "\n".join(scenario.outputs).encode())
    import ray._private.worker

    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    log_files = [path for path in logs.rglob("*") if path.is_file() and path.stat().st_mtime >= scenario.started]
    for path in log_files:
        hits += _hits(str(path), path.read_bytes())
    return {"hits": hits, "objects": objects, "log_files": len(log_files)}
