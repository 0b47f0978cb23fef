"""ecom2f.storage against a real S3 server on loopback (moto): round trips, multipart,
listing, atomic overwrite, parquet through pyarrow, retries."""

from __future__ import annotations

import http.server
import os
import pickle
import subprocess
import sys
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ecom2f import storage
from ecom2f.storage import S3Options, StorageBucketNotFoundError, StorageError, StorageNotFoundError
from ecom2f.storage import s3 as storage_s3
from tests.infra.s3_server import SECRET_ACCESS_KEY


def _object_keys(s3_server, bucket_uri: str) -> list[str]:
    bucket = bucket_uri.removeprefix("s3://")
    response = s3_server.client().list_objects_v2(Bucket=bucket)
    return sorted(item["Key"] for item in response.get("Contents", []))


def test_bytes_round_trip_and_atomic_overwrite(s3_server, s3_bucket):
    uri = f"{s3_bucket}/run/config.yaml"
    storage.write_bytes(uri, b"first")
    assert storage.read_bytes(uri) == b"first"
    storage.write_text(uri, "second ✓")
    assert storage.read_text(uri) == "second ✓"
    # One object, no temporary siblings: an S3 write is a single PUT.
    assert _object_keys(s3_server, s3_bucket) == ["run/config.yaml"]


def test_large_file_goes_multipart_and_round_trips(s3_server, s3_bucket, tmp_path):
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(12 * 1024 * 1024))
    options = S3Options(multipart_threshold_bytes=8 * 1024 * 1024, multipart_chunksize_bytes=5 * 1024 * 1024)
    uri = f"{s3_bucket}/ckpt/big.bin"
    storage.upload_file(source, uri, options)
    head = s3_server.client().head_object(Bucket=s3_bucket.removeprefix("s3://"), Key="ckpt/big.bin")
    # A multipart object's ETag is "<md5 of part md5s>-<number of parts>": 12 MiB / 5 MiB -> 3.
    assert head["ETag"].strip('"').endswith("-3")
    storage.download_file(uri, tmp_path / "back.bin", options)
    assert (tmp_path / "back.bin").read_bytes() == source.read_bytes()


def test_small_file_is_a_single_put(s3_server, s3_bucket, tmp_path):
    source = tmp_path / "small.bin"
    source.write_bytes(b"x" * 1000)
    storage.upload_file(source, f"{s3_bucket}/small.bin")
    head = s3_server.client().head_object(Bucket=s3_bucket.removeprefix("s3://"), Key="small.bin")
    assert "-" not in head["ETag"]


def test_listing_exists_and_recursive_delete(s3_bucket):
    for name in ("run/a.txt", "run/sub/b.txt", "run/sub/deeper/c.txt", "other.txt"):
        storage.write_text(f"{s3_bucket}/{name}", name)
    assert storage.list_uris(f"{s3_bucket}/run") == [f"{s3_bucket}/run/a.txt", f"{s3_bucket}/run/sub/"]
    assert storage.list_uris(f"{s3_bucket}/run/", recursive=True) == [
        f"{s3_bucket}/run/a.txt",
        f"{s3_bucket}/run/sub/b.txt",
        f"{s3_bucket}/run/sub/deeper/c.txt",
    ]
    assert storage.list_uris(s3_bucket) == [f"{s3_bucket}/other.txt", f"{s3_bucket}/run/"]
    assert storage.exists(f"{s3_bucket}/run/a.txt")
    assert storage.exists(f"{s3_bucket}/run/sub")  # a "directory": objects lie under it
    assert not storage.exists(f"{s3_bucket}/run/su")  # a prefix of a name is not a directory
    assert not storage.exists(f"{s3_bucket}/nothing")
    assert storage.delete(f"{s3_bucket}/run/sub", recursive=True) == 2
    assert storage.delete(f"{s3_bucket}/run/a.txt") == 1
    assert storage.delete(f"{s3_bucket}/run/a.txt") == 0
    assert storage.list_uris(s3_bucket, recursive=True) == [f"{s3_bucket}/other.txt"]


def test_missing_object_and_missing_bucket_errors(s3_server, s3_bucket, tmp_path):
    endpoint = s3_server.endpoint_url
    with pytest.raises(StorageNotFoundError) as raised:
        storage.read_bytes(f"{s3_bucket}/nope")
    assert str(raised.value) == f"cannot read {s3_bucket}/nope: no such object at {endpoint}"
    with pytest.raises(StorageNotFoundError):
        storage.download_file(f"{s3_bucket}/nope", tmp_path / "x")
    assert not (tmp_path / "x").exists()
    with pytest.raises(StorageBucketNotFoundError) as raised:
        storage.list_uris("s3://no-such-bucket-ecom2f/run")
    assert str(raised.value) == (
        f"cannot list s3://no-such-bucket-ecom2f/run: bucket 'no-such-bucket-ecom2f' does not exist at {endpoint}; "
        "create it (aws s3 mb s3://no-such-bucket-ecom2f) or fix the URI / AWS_ENDPOINT_URL"
    )


def test_parquet_through_pyarrow_filesystem_honours_aws_endpoint_url(s3_server, s3_bucket):
    filesystem, path = storage.pyarrow_filesystem(f"{s3_bucket}/depth/shard-0.parquet")
    assert path == f"{s3_bucket.removeprefix('s3://')}/depth/shard-0.parquet"  # no scheme, as Ray wants
    table = pa.table({"image_id": [7, 7, 9], "exit": [1, 2, 1], "pq": [0.1, 0.4, 0.9], "loss": [3.0, 2.0, 1.5]})
    pq.write_table(table, path, filesystem=filesystem)
    # boto3 sees what pyarrow wrote: both went to the loopback endpoint, not to AWS.
    assert _object_keys(s3_server, s3_bucket) == ["depth/shard-0.parquet"]
    assert pq.read_table(path, filesystem=filesystem).equals(table)
    assert pq.read_table(pa.BufferReader(storage.read_bytes(f"{s3_bucket}/depth/shard-0.parquet"))).equals(table)


def test_client_uses_configured_retry_mode_and_timeouts(s3_server):
    options = S3Options(retry_mode="adaptive", max_attempts=7, connect_timeout_s=3.0, read_timeout_s=9.0)
    config = storage_s3.client(options).meta.config
    assert config.retries == {"mode": "adaptive", "total_max_attempts": 7}
    assert (config.connect_timeout, config.read_timeout) == (3.0, 9.0)
    assert storage_s3.client(options).meta.endpoint_url == s3_server.endpoint_url


class _AlwaysBusy(http.server.BaseHTTPRequestHandler):
    """An S3 endpoint that answers every request with a retryable 503 SlowDown."""

    requests_seen = 0

    def do_GET(self):  # noqa: N802 (http.server's naming)
        type(self).requests_seen += 1
        body = b"<Error><Code>SlowDown</Code><Message>Reduce your request rate.</Message></Error>"
        self.send_response(503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_throttled_requests_are_retried_with_backoff_then_reported(monkeypatch, s3_server):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AlwaysBusy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{server.server_address[1]}")
        options = S3Options(retry_mode="standard", max_attempts=3)
        with pytest.raises(StorageError) as raised:
            storage.read_bytes("s3://bucket/key", options)
    finally:
        server.shutdown()
    assert _AlwaysBusy.requests_seen == 3
    assert str(raised.value) == (
        f"cannot read s3://bucket/key: S3 error SlowDown: Reduce your request rate. "
        f"(endpoint http://127.0.0.1:{server.server_address[1]})"
    )


def test_s3_options_validation_messages():
    with pytest.raises(ValueError, match=r"^retry_mode='fast': allowed are 'standard', 'adaptive', 'legacy'$"):
        S3Options(retry_mode="fast")
    with pytest.raises(ValueError, match=r"^multipart_chunksize_bytes=1024: S3 needs parts of at least 5 MiB"):
        S3Options(multipart_chunksize_bytes=1024)


def test_directory_upload_and_download(s3_bucket, tmp_path):
    source = tmp_path / "ckpt"
    for name, data in {"model.pt": b"m" * 10, "state/optim.pt": b"o" * 20, "state/rng/rank0.pkl": b"r"}.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(data)
    assert storage.upload_dir(source, f"{s3_bucket}/parent/ckpt_000100") == 3
    assert storage.list_uris(f"{s3_bucket}/parent/ckpt_000100", recursive=True) == [
        f"{s3_bucket}/parent/ckpt_000100/model.pt",
        f"{s3_bucket}/parent/ckpt_000100/state/optim.pt",
        f"{s3_bucket}/parent/ckpt_000100/state/rng/rank0.pkl",
    ]
    assert storage.download_dir(f"{s3_bucket}/parent/ckpt_000100", tmp_path / "back") == 3
    assert (tmp_path / "back" / "state" / "rng" / "rank0.pkl").read_bytes() == b"r"
    assert (tmp_path / "back" / "state" / "optim.pt").read_bytes() == b"o" * 20


def test_pyarrow_filesystem_pickles_for_ray_workers_without_the_secret(s3_bucket):
    filesystem, path = storage.pyarrow_filesystem(f"{s3_bucket}/eval/rows.parquet")
    payload = pickle.dumps(filesystem)  # Ray ships storage_filesystem to every worker this way
    assert SECRET_ACCESS_KEY.encode() not in payload  # workers resolve credentials from their own AWS chain
    table = pa.table({"k": [1, 2]})
    pq.write_table(table, path, filesystem=pickle.loads(payload))
    assert pq.read_table(path, filesystem=filesystem).equals(table)


def test_the_run_configs_storage_settings_reach_this_process_and_the_ones_it_starts(s3_server, s3_bucket,
                                                                                     monkeypatch, tmp_path):
    from ecom2f.config import load_config
    from ecom2f.steps.runs import writing_run
    from tests.conftest import REPO_ROOT

    for name in storage_s3.OPTION_ENV.values():  # whatever open_run sets is undone after the test
        monkeypatch.setenv(name, "placeholder")
        monkeypatch.delenv(name)
    config = load_config(REPO_ROOT / "configs" / "demo_cpu.yaml", [
        f"storage.root={s3_bucket}/runs", "storage.retry_mode=standard", "storage.max_attempts=3",
        "storage.multipart_threshold_mb=8", "storage.multipart_chunksize_mb=5",
    ])
    with writing_run(config):  # open_run, then close_run: the lease it takes is released
        options = storage.environment_options()  # what a call without options uses
        assert (options.retry_mode, options.max_attempts) == ("standard", 3)
        assert (options.multipart_threshold_bytes, options.multipart_chunksize_bytes) == (8 << 20, 5 << 20)
        assert storage_s3.client(options).meta.config.retries == {"mode": "standard", "total_max_attempts": 3}
        # A 9 MiB upload with the run's 8 MiB threshold goes in parts of 5 MiB (two parts).
        source = tmp_path / "big.bin"
        source.write_bytes(os.urandom(9 << 20))
        storage.upload_file(source, f"{s3_bucket}/runs/big.bin")
        bucket, key = storage_s3.split_s3_uri(f"{s3_bucket}/runs/big.bin")
        head = s3_server.client().head_object(Bucket=bucket, Key=key)
        assert head["ETag"].strip('"').endswith("-2")  # a multipart ETag carries its part count
        # A child process (a DataLoader worker, a Ray worker given the run's environment) reads the same.
        code = ("from ecom2f import storage; o = storage.environment_options(); "
                "print(o.retry_mode, o.max_attempts, o.multipart_threshold_bytes)")
        child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
        assert child.stdout.split() == ["standard", "3", str(8 << 20)], child.stderr[-2000:]


def test_a_worker_rebuilding_the_run_config_takes_its_storage_settings(monkeypatch):
    from ecom2f.config import load_config
    from ecom2f.steps.runs import worker_config
    from tests.conftest import REPO_ROOT

    for name in storage_s3.OPTION_ENV.values():  # whatever worker_config sets is undone after the test
        monkeypatch.setenv(name, "placeholder")
        monkeypatch.delenv(name)
    driver = load_config(REPO_ROOT / "configs" / "demo_cpu.yaml", ["storage.max_attempts=2", "storage.retry_mode=standard"])
    config = worker_config(driver.model_dump(mode="json"), source="a worker")
    assert config == driver
    assert (storage.environment_options().max_attempts, storage.environment_options().retry_mode) == (2, "standard")
