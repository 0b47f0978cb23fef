"""The run's ``storage.retry_mode`` / ``storage.max_attempts`` reach the S3 clients that do the work
(issue 17 section 2): counted at the socket, an endpoint that accepts each connection and closes
it at once is tried exactly ``max_attempts`` times by boto3 (the artifacts) and by pyarrow (Ray
Train's checkpoints, parquet), in the job's process and in a process it starts."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading

import pytest

from ecom2f import storage
from ecom2f.storage import s3 as storage_s3
from ecom2f.storage.errors import StorageConnectionError
from tests.conftest import REPO_ROOT
from tests.steps.conftest import tiny_config


class _HangUpEndpoint:
    """Accepts connections on loopback and closes each at once; counts them."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.count = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            self.count += 1
            connection.close()

    def attempts(self, action) -> int:
        self.count = 0
        with pytest.raises(Exception) as raised:
            action()
        self.error = raised.value
        return self.count


# In a child process: what a Ray worker or DataLoader worker does with the job's config and environment.
CHILD = """
import json, sys
from ecom2f import storage
from ecom2f.steps.runs import worker_config
worker_config(json.loads(sys.stdin.read()), source="test")
try:
    storage.write_bytes("s3://bucket/child", b"x")
except storage.StorageError as error:
    print(error)
"""


def test_retry_settings_reach_boto3_and_pyarrow_here_and_in_child_processes(monkeypatch, tiny_data_root, tmp_path):
    endpoint = _HangUpEndpoint()
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint.url)
    for name, value in {"AWS_ACCESS_KEY_ID": "retries-test", "AWS_SECRET_ACCESS_KEY": "retries-test",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(name, value)
    for name in storage_s3.OPTION_ENV.values():  # whatever the job sets is undone after the test
        monkeypatch.delenv(name, raising=False)
    for attempts in (1, 3):
        config = tiny_config(tiny_data_root, tmp_path / "runs", f"storage.max_attempts={attempts}",
                             "storage.retry_mode=standard")
        storage.configure(config.storage.s3_options())  # what open_run and worker_config do
        assert endpoint.attempts(lambda: storage.write_bytes("s3://bucket/key", b"x")) == attempts
        assert isinstance(endpoint.error, StorageConnectionError)
        assert str(endpoint.error).startswith(f"cannot write s3://bucket/key: the S3 endpoint {endpoint.url} is "
                                              "unreachable")

        def through_pyarrow():
            filesystem, path = storage.pyarrow_filesystem("s3://bucket/checkpoint/state.pt")
            with filesystem.open_output_stream(path) as stream:
                stream.write(b"x")

        assert endpoint.attempts(through_pyarrow) == attempts

    # A process the job starts: the settings travel in the config it is given (and its environment).
    monkeypatch.delenv("AWS_MAX_ATTEMPTS")
    endpoint.count = 0
    child = subprocess.run([sys.executable, "-c", CHILD], input=json.dumps(config.model_dump(mode="json")),
                           cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert child.returncode == 0, child.stderr[-2000:]
    assert endpoint.count == 3 and child.stdout.startswith(f"cannot write s3://bucket/child: the S3 endpoint "
                                                           f"{endpoint.url}")


def test_a_ray_train_failure_caused_by_s3_becomes_one_line_naming_the_checkpoint(tiny_data_root, tmp_path):
    """Ray Train's error text (pyarrow's S3 errors, possibly several) -> one line naming the checkpoint
    object, the endpoint and the limits that were reached; any other failure is left alone."""
    from ecom2f.steps.parent.job import storage_failure

    config = tiny_config(tiny_data_root, tmp_path / "runs", "storage.max_attempts=2", "parent.max_failures=1")
    text = ("TrainingFailedError: worker 0 failed:\nOSError: When uploading part for key 'runs/demo/parent/train/"
            "checkpoint_2026-12-01_04-40-00.123456/state/mp_rank_00_model_states.pt' in bucket 'b': AWS Error "
            "NETWORK_CONNECTION during UploadPart operation: curlCode: 7\nOSError: When writing key 'runs/demo/parent/"
            "train/.validate_storage_marker' in bucket 'b': AWS Error NETWORK_CONNECTION during PutObject")
    error = storage_failure(RuntimeError(text), config)
    assert isinstance(error, StorageConnectionError) and "\n" not in str(error)
    assert str(error).startswith("step 1 could not transfer s3://b/runs/demo/parent/train/checkpoint_2026-12-01_"
                                 "04-40-00.123456/state/mp_rank_00_model_states.pt: the S3 endpoint ")
    assert "is unreachable after 2 attempts per request (storage.max_attempts) and 1 restarts" in str(error)
    assert storage_failure(RuntimeError("ZeroDivisionError: division by zero"), config) is None
    # Only the storage marker Ray Train checks before an upload (the rest of the traceback cut out): the folder.
    marker = ("OSError: When getting information for key 'runs/demo/parent/train/.validate_storage_marker' in bucket "
              "'b': AWS Error NETWORK_CONNECTION during HeadObject operation: curlCode: 7")
    assert str(storage_failure(RuntimeError(marker), config)).startswith(
        "step 1 could not transfer a checkpoint under s3://b/runs/demo/parent/train/ (Ray Train's check of its "
        ".validate_storage_marker): the S3 endpoint ")
