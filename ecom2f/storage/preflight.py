"""The start-of-job proof that a run's storage root is writable, readable and reachable."""

from __future__ import annotations

import os
import time
import uuid

from ecom2f.storage import s3 as storage_s3
from ecom2f.storage.errors import StorageError, StoragePreflightError
from ecom2f.storage.files import delete, is_s3, join, pyarrow_filesystem, read_bytes, write_bytes
from ecom2f.storage.s3 import PREFLIGHT_OPTIONS, S3Options


def preflight(uri: str | os.PathLike, options: S3Options = PREFLIGHT_OPTIONS, check_pyarrow: bool = True) -> float:
    """Write, read back and delete a probe under ``uri``; return the seconds it took.

    Run at the start of every job, before Ray or GPU work: a missing bucket, rejected or
    missing credentials, denied access or an unreachable endpoint raise
    :class:`StoragePreflightError` within seconds (short timeouts, two attempts). With
    ``check_pyarrow`` the probe is also read through :func:`pyarrow_filesystem`, the path
    Ray Train and parquet use, so a pyarrow endpoint mismatch is caught here too.
    """
    start = time.monotonic()
    probe = join(uri, f".ecom2f-preflight-{uuid.uuid4().hex}")
    payload = f"ecom2f preflight {uuid.uuid4().hex}".encode()
    try:
        write_bytes(probe, payload, options)
        if read_bytes(probe, options) != payload:
            raise StorageError(f"read back different bytes from {probe}: the storage does not keep what it is given")
        if check_pyarrow:
            _read_through_pyarrow(probe, payload, options)
        delete(probe, options=options)
    except StorageError as error:
        raise StoragePreflightError(f"storage preflight of {uri} failed: {error}") from None
    except OSError as error:
        raise StoragePreflightError(
            f"storage preflight of {uri} failed: {type(error).__name__}: {error}; check that the path is writable"
        ) from None
    return time.monotonic() - start


def _read_through_pyarrow(probe: str, payload: bytes, options: S3Options) -> None:
    filesystem, path = pyarrow_filesystem(probe, options)
    try:
        with filesystem.open_input_stream(path) as stream:
            seen = stream.read()
    except OSError as error:
        endpoint = storage_s3.describe_endpoint(options) if is_s3(probe) else "the local filesystem"
        raise StorageError(
            f"boto3 wrote {probe} but pyarrow could not read it through {endpoint} "
            f"({type(error).__name__}: {error}); Ray Train would fail the same way: check AWS_ENDPOINT_URL and AWS_REGION"
        ) from None
    if seen != payload:
        raise StorageError(f"pyarrow read different bytes from {probe} than boto3 wrote: two different endpoints?")
