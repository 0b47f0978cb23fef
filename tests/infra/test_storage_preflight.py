"""preflight(): the start-of-job probe, and that no secret reaches a message or a log."""

from __future__ import annotations

import http.server
import logging
import re
import socket
import threading
import time

import pytest

from ecom2f import storage
from ecom2f.storage import StoragePreflightError
from tests.infra.s3_server import SECRET_ACCESS_KEY

PROBE = r"\.ecom2f-preflight-[0-9a-f]{32}"


def _preflight_error(uri: str) -> tuple[str, float]:
    start = time.monotonic()
    with pytest.raises(StoragePreflightError) as raised:
        storage.preflight(uri)
    return str(raised.value), time.monotonic() - start


def _use_keys(monkeypatch, access_key_id: str, secret_access_key: str) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret_access_key)


def test_preflight_writes_reads_and_deletes_a_probe(s3_server, s3_bucket):
    storage.write_text(f"{s3_bucket}/run/config.yaml", "kept")
    seconds = storage.preflight(f"{s3_bucket}/run")
    assert seconds < 5.0
    assert storage.list_uris(s3_bucket, recursive=True) == [f"{s3_bucket}/run/config.yaml"]


def test_missing_bucket(s3_server):
    message, seconds = _preflight_error("s3://ecom2f-missing-bucket/runs")
    assert re.fullmatch(
        rf"storage preflight of s3://ecom2f-missing-bucket/runs failed: cannot write "
        rf"s3://ecom2f-missing-bucket/runs/{PROBE}: bucket 'ecom2f-missing-bucket' does not exist at "
        rf"{re.escape(s3_server.endpoint_url)}; create it \(aws s3 mb s3://ecom2f-missing-bucket\) "
        rf"or fix the URI / AWS_ENDPOINT_URL",
        message,
    ), message
    assert seconds < 5.0


def test_unreachable_endpoint_fails_within_seconds(monkeypatch, s3_server):
    with socket.socket() as sock:  # a loopback port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    message, seconds = _preflight_error("s3://bucket/runs")
    assert re.fullmatch(
        rf"storage preflight of s3://bucket/runs failed: cannot write s3://bucket/runs/{PROBE}: "
        rf"the S3 endpoint http://127\.0\.0\.1:{port} is unreachable \(EndpointConnectionError\); "
        rf"check AWS_ENDPOINT_URL, that the server is running, and the network / proxy settings",
        message,
    ), message
    assert seconds < 5.0


@pytest.fixture
def enforced_auth(s3_server, s3_bucket):
    with s3_server.enforce_auth(s3_bucket.removeprefix("s3://")) as pairs:
        yield s3_bucket, pairs


def test_valid_keys_pass_under_enforced_auth(monkeypatch, enforced_auth):
    bucket, pairs = enforced_auth
    _use_keys(monkeypatch, pairs["allowed"].access_key_id, pairs["allowed"].secret_access_key)
    assert storage.preflight(f"{bucket}/run") < 5.0


def test_unknown_access_key(monkeypatch, s3_server, enforced_auth):
    bucket, _ = enforced_auth
    _use_keys(monkeypatch, "AKIAUNKNOWNKEY000000", SECRET_ACCESS_KEY)
    message, seconds = _preflight_error(f"{bucket}/run")
    assert re.fullmatch(
        rf"storage preflight of {bucket}/run failed: cannot write {bucket}/run/{PROBE}: the credentials "
        rf"were rejected by {re.escape(s3_server.endpoint_url)} \(InvalidAccessKeyId\); check "
        rf"AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN or AWS_PROFILE",
        message,
    ), message
    assert seconds < 5.0


def test_wrong_secret_key_is_reported_and_never_shown(monkeypatch, caplog, s3_server, enforced_auth):
    bucket, pairs = enforced_auth
    wrong_secret = "wRoNg-SeCrEt-0123456789-abcdefghijklmnop"
    _use_keys(monkeypatch, pairs["allowed"].access_key_id, wrong_secret)
    caplog.set_level(logging.DEBUG)  # every logger, botocore's included
    start = time.monotonic()
    with pytest.raises(StoragePreflightError) as raised:
        storage.preflight(f"{bucket}/run")
    assert time.monotonic() - start < 5.0
    assert "(SignatureDoesNotMatch); check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY" in str(raised.value)
    for text in (str(raised.value), repr(raised.value), caplog.text, repr(storage.DEFAULT_OPTIONS)):
        assert wrong_secret not in text
    assert raised.value.__cause__ is None and raised.value.__suppress_context__  # no boto3 request in the chain


def test_denied_access(monkeypatch, s3_server, enforced_auth):
    bucket, pairs = enforced_auth
    _use_keys(monkeypatch, pairs["denied"].access_key_id, pairs["denied"].secret_access_key)
    name = bucket.removeprefix("s3://")
    message, seconds = _preflight_error(f"{bucket}/run")
    assert re.fullmatch(
        rf"storage preflight of {bucket}/run failed: cannot write {bucket}/run/{PROBE}: access denied by "
        rf"{re.escape(s3_server.endpoint_url)} \(AccessDenied\); check that the IAM policy and the bucket "
        rf"policy of '{name}' allow s3:GetObject, s3:PutObject, s3:DeleteObject and s3:ListBucket for "
        rf"these credentials",
        message,
    ), message
    assert seconds < 5.0


def test_no_credentials_at_all(monkeypatch, s3_server):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    message, _ = _preflight_error("s3://bucket/run")
    assert message.endswith(
        ": no usable AWS credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
        "or run where an instance role is available"
    ), message


def test_server_that_never_answers_fails_within_the_read_timeouts(monkeypatch, s3_server):
    with socket.socket() as listener:  # accepts connections (kernel backlog) and never replies
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        message, seconds = _preflight_error("s3://bucket/runs")
    assert message.endswith(
        f": http://127.0.0.1:{port} accepted the connection but did not answer within 3 s (2 attempts); "
        "check that it is an S3 server and that it is not overloaded, and AWS_ENDPOINT_URL / proxy settings"
    ), message
    assert seconds < 12.0  # 2 attempts x 3 s read timeout + backoff


class _NotS3(http.server.BaseHTTPRequestHandler):
    def do_PUT(self):  # noqa: N802
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_endpoint_that_is_not_s3(monkeypatch, s3_server):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotS3)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    try:
        message, _ = _preflight_error("s3://bucket/runs")
    finally:
        server.shutdown()
    assert message.endswith(
        f": http://127.0.0.1:{port} answered HTTP 404 without an S3 error; check that AWS_ENDPOINT_URL points "
        "at an S3 server (host and port)"
    ), message
