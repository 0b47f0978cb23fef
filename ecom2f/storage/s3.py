"""The ``s3://`` half of :mod:`ecom2f.storage`: boto3 for objects, pyarrow for Ray and parquet.

Endpoint and credentials come from the standard AWS chain (environment, shared config
files, instance roles). The endpoint is resolved once, here, and handed to both boto3 and
pyarrow, because pyarrow's ``S3FileSystem`` ignores ``AWS_ENDPOINT_URL``.

Nothing in this module formats credentials into a message, a repr or a log line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit

from ecom2f.storage.errors import (
    StorageBucketNotFoundError,
    StorageConflictError,
    StorageConnectionError,
    StorageCredentialsError,
    StorageError,
    StorageNotFoundError,
    StoragePermissionError,
)

log = logging.getLogger(__name__)

# Error codes S3 returns for each kind of failure (HEAD requests carry only the status).
_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "TokenRefreshRequired"}
_DENIED_CODES = {"AccessDenied", "AllAccessDisabled", "403", "Forbidden"}
_MISSING_KEY_CODES = {"NoSuchKey", "NotFound"}
# A bare "404" means "no such object" only for HEAD requests (they carry no error body);
# anything else answered with a bodiless 404 is not S3 at all (a wrong endpoint or port).
_HEAD_ACTIONS = {"check", "download"}

# Environment variables that change which client we need; hashed into the cache key so a
# changed endpoint or key pair (tests, long-lived processes) gets a fresh client.
AWS_ENV = (
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL",
    "AWS_PROFILE",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
    "AWS_RETRY_MODE",
    "AWS_MAX_ATTEMPTS",
)


@dataclasses.dataclass(frozen=True)
class S3Options:
    """How to talk to S3: retries, timeouts, multipart sizes. Holds no credentials.

    ``retry_mode`` is botocore's: "standard" (exponential backoff with jitter) or
    "adaptive" (standard plus client-side rate limiting when S3 throttles).
    """

    endpoint_url: str | None = None  # None: AWS_ENDPOINT_URL_S3, then AWS_ENDPOINT_URL, then AWS
    region: str | None = None  # None: the AWS chain (AWS_REGION, AWS_DEFAULT_REGION, profile)
    retry_mode: str = "adaptive"
    max_attempts: int = 8
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    multipart_threshold_bytes: int = 64 * 1024 * 1024
    multipart_chunksize_bytes: int = 16 * 1024 * 1024
    max_concurrency: int = 4

    def __post_init__(self) -> None:
        if self.retry_mode not in ("standard", "adaptive", "legacy"):
            raise ValueError(f"retry_mode={self.retry_mode!r}: allowed are 'standard', 'adaptive', 'legacy'")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts={self.max_attempts}: must be at least 1 (1 means no retry)")
        # S3 refuses multipart parts below 5 MiB (except the last one).
        if self.multipart_chunksize_bytes < 5 * 1024 * 1024:
            raise ValueError(
                f"multipart_chunksize_bytes={self.multipart_chunksize_bytes}: S3 needs parts of at least 5 MiB (5242880)"
            )


# A job's S3 settings (the storage section of its config) reach every process that talks to S3
# (the driver, Ray workers and actors, DataLoader workers) as environment variables: botocore's
# own two, and ours for the transfer sizes.
OPTION_ENV = {
    "retry_mode": "AWS_RETRY_MODE",
    "max_attempts": "AWS_MAX_ATTEMPTS",
    "multipart_threshold_bytes": "ECOM2F_S3_MULTIPART_THRESHOLD",
    "multipart_chunksize_bytes": "ECOM2F_S3_MULTIPART_CHUNKSIZE",
}


def options_environment(options: S3Options) -> dict[str, str]:
    """The environment variables that carry ``options`` to other processes."""
    return {name: str(getattr(options, field)) for field, name in OPTION_ENV.items()}


def environment_options() -> S3Options:
    """This process's options: the defaults, overridden by what the environment carries."""
    values = {}
    for field, name in OPTION_ENV.items():
        raw = os.environ.get(name)
        if raw:
            values[field] = raw if field == "retry_mode" else int(raw)
    return S3Options(**values)


def effective(options: S3Options | None) -> S3Options:
    return options if options is not None else environment_options()


# For preflight: an unreachable endpoint or a bad key must fail in seconds, not minutes.
PREFLIGHT_OPTIONS = S3Options(retry_mode="standard", max_attempts=2, connect_timeout_s=2.0, read_timeout_s=3.0)


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``; the key has no leading slash."""
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"not an S3 URI: {uri!r}; expected s3://BUCKET/KEY")
    return parts.netloc, parts.path.lstrip("/")


def resolve_endpoint_url(options: S3Options) -> str | None:
    """The custom S3 endpoint in force, or None for AWS itself (botocore's precedence)."""
    return options.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def describe_endpoint(options: S3Options) -> str:
    return resolve_endpoint_url(options) or "AWS S3 (no AWS_ENDPOINT_URL set)"


_clients: dict[tuple, object] = {}
_clients_lock = threading.Lock()


def client(options: S3Options):
    """A cached boto3 S3 client for these options and the current AWS environment."""
    env_digest = hashlib.sha256(repr([os.environ.get(name) for name in AWS_ENV]).encode()).hexdigest()
    key = (options, env_digest, os.getpid())  # a forked DataLoader worker must not share its parent's sockets
    with _clients_lock:
        cached = _clients.get(key)
        if cached is None:
            cached = _make_client(options)
            _clients[key] = cached
        return cached


def _make_client(options: S3Options):
    import boto3
    from botocore.config import Config

    endpoint = resolve_endpoint_url(options)
    config = Config(
        retries={"mode": options.retry_mode, "total_max_attempts": options.max_attempts},  # total, first try included
        connect_timeout=options.connect_timeout_s,
        read_timeout=options.read_timeout_s,
        # S3-compatible servers (MinIO, moto, SeaweedFS) serve buckets by path, not by host.
        s3={"addressing_style": "path"} if endpoint else {},
    )
    session = boto3.session.Session(region_name=options.region)
    return session.client("s3", endpoint_url=endpoint, config=config)


def translate_error(error: BaseException, uri: str, action: str, options: S3Options) -> StorageError:
    """A boto3/botocore exception -> a StorageError that says what to check."""
    from boto3.exceptions import S3UploadFailedError
    from botocore import exceptions as bce

    if isinstance(error, S3UploadFailedError) and isinstance(error.__context__, bce.ClientError):
        error = error.__context__  # boto3 wraps the ClientError of a (multipart) upload
    endpoint = describe_endpoint(options)
    bucket = urlsplit(uri).netloc
    if isinstance(error, bce.ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code == "NoSuchBucket":
            return StorageBucketNotFoundError(
                f"cannot {action} {uri}: bucket {bucket!r} does not exist at {endpoint}; "
                f"create it (aws s3 mb s3://{bucket}) or fix the URI / AWS_ENDPOINT_URL"
            )
        if code in _MISSING_KEY_CODES or (code == "404" and action in _HEAD_ACTIONS):
            return StorageNotFoundError(f"cannot {action} {uri}: no such object at {endpoint}")
        if code.isdigit():
            return StorageConnectionError(
                f"cannot {action} {uri}: {endpoint} answered HTTP {code} without an S3 error; "
                "check that AWS_ENDPOINT_URL points at an S3 server (host and port)"
            )
        if code in _CREDENTIAL_CODES:
            return StorageCredentialsError(
                f"cannot {action} {uri}: the credentials were rejected by {endpoint} ({code}); "
                "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN or AWS_PROFILE"
            )
        if code in _DENIED_CODES:
            return StoragePermissionError(
                f"cannot {action} {uri}: access denied by {endpoint} ({code}); check that the IAM "
                f"policy and the bucket policy of {bucket!r} allow s3:GetObject, s3:PutObject, "
                "s3:DeleteObject and s3:ListBucket for these credentials"
            )
        message = error.response.get("Error", {}).get("Message", "")
        return StorageError(f"cannot {action} {uri}: S3 error {code}: {message} (endpoint {endpoint})")
    if isinstance(error, bce.NoCredentialsError | bce.PartialCredentialsError):
        return StorageCredentialsError(
            f"cannot {action} {uri}: no usable AWS credentials; set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run where an instance role is available"
        )
    if isinstance(error, bce.ReadTimeoutError):
        return StorageConnectionError(
            f"cannot {action} {uri}: {endpoint} accepted the connection but did not answer within "
            f"{options.read_timeout_s:g} s ({options.max_attempts} attempts); check that it is an S3 server "
            "and that it is not overloaded, and AWS_ENDPOINT_URL / proxy settings"
        )
    if isinstance(error, bce.EndpointConnectionError | bce.ConnectTimeoutError | bce.ConnectionClosedError):
        return StorageConnectionError(
            f"cannot {action} {uri}: the S3 endpoint {endpoint} is unreachable ({type(error).__name__}); "
            "check AWS_ENDPOINT_URL, that the server is running, and the network / proxy settings"
        )
    return StorageError(f"cannot {action} {uri}: {type(error).__name__}: {error}")


def _call(uri: str, action: str, options: S3Options, function, *args, **kwargs):
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return function(*args, **kwargs)
    except (ClientError, BotoCoreError, Boto3Error) as error:
        raise translate_error(error, uri, action, options) from None  # from None: no signed request in the trace


def read_bytes(uri: str, options: S3Options) -> bytes:
    bucket, key = split_s3_uri(uri)
    response = _call(uri, "read", options, client(options).get_object, Bucket=bucket, Key=key)
    return _call(uri, "read", options, response["Body"].read)


def write_bytes(uri: str, data: bytes, options: S3Options) -> None:
    """One PUT: S3 makes an object visible whole or not at all, so this is atomic."""
    bucket, key = split_s3_uri(uri)
    _call(uri, "write", options, client(options).put_object, Bucket=bucket, Key=key, Body=data)


def _transfer_config(options: S3Options):
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=options.multipart_threshold_bytes,
        multipart_chunksize=options.multipart_chunksize_bytes,
        max_concurrency=options.max_concurrency,
    )


def upload_file(local_path: str, uri: str, options: S3Options) -> None:
    """Multipart above the threshold; the object appears only when the upload completes."""
    bucket, key = split_s3_uri(uri)
    log.debug("uploading %s (%d bytes) to %s", local_path, os.path.getsize(local_path), uri)
    _call(uri, "upload to", options, client(options).upload_file, local_path, bucket, key, Config=_transfer_config(options))


def download_file(uri: str, local_path: str, options: S3Options) -> None:
    bucket, key = split_s3_uri(uri)
    log.debug("downloading %s to %s", uri, local_path)
    _call(uri, "download", options, client(options).download_file, bucket, key, local_path, Config=_transfer_config(options))


def exists(uri: str, options: S3Options) -> bool:
    """True if an object is at the URI, or any object lies under ``URI/`` (a "directory")."""
    bucket, key = split_s3_uri(uri)
    if key and object_exists(uri, options):
        return True
    prefix = key.rstrip("/") + "/" if key else ""
    response = _call(uri, "list", options, client(options).list_objects_v2, Bucket=bucket, Prefix=prefix, MaxKeys=1)
    return response.get("KeyCount", 0) > 0


def iter_listing(uri: str, recursive: bool, options: S3Options) -> Iterator[str]:
    """URIs under ``uri`` treated as a directory; non-recursive "subdirectories" end in "/"."""
    bucket, key = split_s3_uri(uri)
    prefix = key.rstrip("/") + "/" if key else ""
    paginator = client(options).get_paginator("list_objects_v2")
    kwargs = {"Bucket": bucket, "Prefix": prefix}
    if not recursive:
        kwargs["Delimiter"] = "/"
    pages = _call(uri, "list", options, lambda: list(paginator.paginate(**kwargs)))
    for page in pages:
        for common in page.get("CommonPrefixes", []):
            yield f"s3://{bucket}/{common['Prefix']}"
        for item in page.get("Contents", []):
            # Zero-byte "folder" markers (the prefix itself, or any key ending in "/", which pyarrow and
            # some tools write) are no files.
            if item["Key"] != prefix and not item["Key"].endswith("/"):
                yield f"s3://{bucket}/{item['Key']}"


def delete(uri: str, recursive: bool, options: S3Options) -> int:
    """Delete the object (and with ``recursive`` everything under ``uri/``); returns the count."""
    bucket, key = split_s3_uri(uri)
    s3 = client(options)
    keys = [key] if key and object_exists(uri, options) else []
    if recursive:
        keys += [split_s3_uri(item)[1] for item in iter_listing(uri, True, options)]
    for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
        batch = [{"Key": k} for k in keys[start : start + 1000]]
        response = _call(uri, "delete", options, s3.delete_objects, Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
        if response.get("Errors"):
            first = response["Errors"][0]
            raise StorageError(f"cannot delete s3://{bucket}/{first['Key']}: {first.get('Code')}: {first.get('Message')}")
    return len(keys)


def object_exists(uri: str, options: S3Options) -> bool:
    """True if an object is exactly at the URI (a missing bucket still raises)."""
    bucket, key = split_s3_uri(uri)
    try:
        _call(uri, "check", options, client(options).head_object, Bucket=bucket, Key=key)
        return True
    except StorageBucketNotFoundError:
        raise
    except StorageNotFoundError:
        return False


def read_versioned(uri: str, options: S3Options) -> tuple[bytes, str, float] | None:
    """``(bytes, ETag, age in seconds)`` of the object, or None when there is none. The age is the
    server's own: its ``Date`` header minus the object's ``LastModified`` (no client clock involved)."""
    import email.utils

    bucket, key = split_s3_uri(uri)
    try:
        response = _call(uri, "read", options, client(options).get_object, Bucket=bucket, Key=key)
    except StorageBucketNotFoundError:
        raise
    except StorageNotFoundError:
        return None
    data = _call(uri, "read", options, response["Body"].read)
    served = response["ResponseMetadata"].get("HTTPHeaders", {}).get("date")
    now = email.utils.parsedate_to_datetime(served) if served else response["LastModified"]
    return data, response["ETag"], max(0.0, (now - response["LastModified"]).total_seconds())


def put_if(uri: str, data: bytes, options: S3Options, *, absent: bool = False, etag: str | None = None) -> str:
    """One PUT that S3 applies only if the object is absent (``If-None-Match: *``) or still has
    ``etag`` (``If-Match``); returns the new ETag. Raises :class:`StorageConflictError` otherwise."""
    from botocore.exceptions import ClientError

    bucket, key = split_s3_uri(uri)
    condition = {"IfNoneMatch": "*"} if absent else {"IfMatch": etag}
    try:
        return client(options).put_object(Bucket=bucket, Key=key, Body=data, **condition)["ETag"]
    except ClientError as error:
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409", "NoSuchKey"):
            raise StorageConflictError(f"{uri} was created or changed by someone else ({code})") from None
        raise translate_error(error, uri, "write", options) from None
    except Exception as error:  # botocore's connection errors
        raise translate_error(error, uri, "write", options) from None


def pyarrow_filesystem(uri: str, options: S3Options):
    """``(pyarrow.fs.S3FileSystem, "bucket/key")`` with the same endpoint boto3 uses."""
    from pyarrow import fs as pafs

    bucket, key = split_s3_uri(uri)
    kwargs: dict = {
        "connect_timeout": options.connect_timeout_s,
        "request_timeout": options.read_timeout_s,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=options.max_attempts),
    }
    endpoint = resolve_endpoint_url(options)
    if endpoint:
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs["scheme"] = parts.scheme
        kwargs["endpoint_override"] = parts.netloc + parts.path.rstrip("/")
    region = options.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    elif endpoint:
        kwargs["region"] = "us-east-1"  # S3-compatible servers ignore it; Arrow would otherwise probe AWS
    path = f"{bucket}/{key}".rstrip("/")
    return pafs.S3FileSystem(**kwargs), path
