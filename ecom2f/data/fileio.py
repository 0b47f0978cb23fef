"""Reading dataset files from a local directory or an ``s3://`` root.

Local paths use the file system directly; ``s3://bucket/prefix`` roots go through
``pyarrow.fs.S3FileSystem``. pyarrow's S3FileSystem ignores ``AWS_ENDPOINT_URL``, so
it is passed as ``endpoint_override`` here (MinIO, moto, on-premises S3).
"""

from __future__ import annotations

import os
import posixpath
from functools import lru_cache
from pathlib import Path


def is_uri(path: str | os.PathLike) -> bool:
    return str(path).startswith("s3://")


def join(root: str | os.PathLike, *parts: str) -> str:
    """Join path parts under a local directory or a URI (always with '/')."""
    root = str(root)
    if is_uri(root):
        return posixpath.join(root, *parts)
    return os.path.join(root, *parts)


@lru_cache(maxsize=8)
def _s3_filesystem(endpoint: str | None, region: str | None):
    from pyarrow import fs

    kwargs = {}
    if endpoint:
        kwargs["endpoint_override"] = endpoint
        if endpoint.startswith("http://"):
            kwargs["scheme"] = "http"
    if region:
        kwargs["region"] = region
    return fs.S3FileSystem(**kwargs)


def _split_s3(uri: str):
    path = uri[len("s3://") :]
    filesystem = _s3_filesystem(
        os.environ.get("AWS_ENDPOINT_URL") or None,
        os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None,
    )
    return filesystem, path


def read_bytes(path: str | os.PathLike) -> bytes:
    """The whole file; raises FileNotFoundError when it does not exist."""
    path = str(path)
    if is_uri(path):
        filesystem, key = _split_s3(path)
        from pyarrow import fs

        if filesystem.get_file_info(key).type != fs.FileType.File:
            raise FileNotFoundError(path)
        with filesystem.open_input_stream(key) as stream:
            return stream.read()
    return Path(path).read_bytes()


def exists(path: str | os.PathLike) -> bool:
    path = str(path)
    if is_uri(path):
        from pyarrow import fs

        filesystem, key = _split_s3(path)
        return filesystem.get_file_info(key).type != fs.FileType.NotFound
    return os.path.exists(path)


def list_files(directory: str | os.PathLike) -> set[str]:
    """Base names of the files directly in a directory (empty when it does not exist)."""
    directory = str(directory)
    if is_uri(directory):
        from pyarrow import fs

        filesystem, key = _split_s3(directory)
        infos = filesystem.get_file_info(fs.FileSelector(key.rstrip("/"), allow_not_found=True))
        return {posixpath.basename(i.path) for i in infos if i.type == fs.FileType.File}
    if not os.path.isdir(directory):
        return set()
    return {entry.name for entry in os.scandir(directory) if entry.is_file()}


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write a local file under a temporary name, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
