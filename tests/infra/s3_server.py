"""A real S3 server on loopback for tests: moto's ThreadedMotoServer, in-process.

Reusable by any test folder: in its ``conftest.py`` write
``from tests.infra.s3_server import s3_server, s3_bucket  # noqa: F401``.

``s3_server`` (session) starts the server on 127.0.0.1 with a free port, points the
standard AWS environment at it (AWS_ENDPOINT_URL, a key pair, region; no profile or
config files), and yields an :class:`S3Server`. ``s3_bucket`` (function) yields
``s3://<fresh bucket>``. ``S3Server.enforce_auth()`` turns on moto's IAM checks for a block
and yields key pairs of an allowed and a denied user.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import urllib.request
import uuid

import pytest

ACCESS_KEY_ID = "ecom2f-test-key-id"
SECRET_ACCESS_KEY = "ecom2f-test-secret-DO-NOT-LOG"
REGION = "us-east-1"


@dataclasses.dataclass(frozen=True)
class KeyPair:
    access_key_id: str
    secret_access_key: str


@dataclasses.dataclass(frozen=True)
class S3Server:
    endpoint_url: str

    def client(self, key_pair: KeyPair | None = None):
        import boto3

        key_pair = key_pair or KeyPair(ACCESS_KEY_ID, SECRET_ACCESS_KEY)
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=key_pair.access_key_id,
            aws_secret_access_key=key_pair.secret_access_key,
        )

    def new_bucket(self, prefix: str = "ecom2f-test") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.client().create_bucket(Bucket=name)
        return name

    def _set_auth_threshold(self, value: str) -> None:
        # moto's own API: after this many unauthenticated requests, every request is
        # checked against IAM ("0": all of them; "inf": none, the default).
        request = urllib.request.Request(
            f"{self.endpoint_url}/moto-api/reset-auth",
            data=value.encode(), method="POST",
            headers={"Content-Type": "text/plain"},  # a form type would make werkzeug swallow the body
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            json.loads(response.read())

    @contextlib.contextmanager
    def enforce_auth(self, bucket: str):
        """IAM checks on for the block; yields ``{"allowed": KeyPair, "denied": KeyPair}``.

        "allowed" may do anything on ``bucket``; "denied" is a valid user with no S3 rights.
        """
        import boto3

        iam = boto3.client(
            "iam",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
        )
        suffix = uuid.uuid4().hex[:8]
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": "s3:*", "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]}
            ],
        }
        pairs = {}
        for role in ("allowed", "denied"):
            user = f"ecom2f-{role}-{suffix}"
            iam.create_user(UserName=user)
            if role == "allowed":
                iam.put_user_policy(UserName=user, PolicyName="bucket-access", PolicyDocument=json.dumps(policy))
            key = iam.create_access_key(UserName=user)["AccessKey"]
            pairs[role] = KeyPair(key["AccessKeyId"], key["SecretAccessKey"])
        self._set_auth_threshold("0")
        try:
            yield pairs
        finally:
            self._set_auth_threshold("inf")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one access-log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    empty = tmp_path_factory.mktemp("aws-config") / "none"
    with pytest.MonkeyPatch.context() as patch:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_REGION"):
            patch.delenv(name, raising=False)
        # No user config files: the test must see exactly this environment.
        patch.setenv("AWS_CONFIG_FILE", str(empty))
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
        patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        patch.setenv("AWS_ENDPOINT_URL", endpoint)
        patch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
        patch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
        patch.setenv("AWS_DEFAULT_REGION", REGION)
        try:
            yield S3Server(endpoint)
        finally:
            server.stop()


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """``s3://<a fresh empty bucket>`` on the loopback server."""
    return f"s3://{s3_server.new_bucket()}"
