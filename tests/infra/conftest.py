"""Fixtures of the infra tests; the S3 server fixtures live in s3_server.py for reuse."""

from tests.infra.s3_server import s3_bucket, s3_server  # noqa: F401
