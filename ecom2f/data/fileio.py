"""Reading dataset files from a local directory or an ``s3://`` root.

Local paths use the file system directly; ``s3://bucket/prefix`` roots go through
``pyarrow.fs.S3FileSystem``, with the endpoint, region and retries resolved the way every
other S3 access of ecom2f resolves them (:mod:`ecom2f.storage.s3`: ``AWS_ENDPOINT_URL_S3``,
then ``AWS_ENDPOINT_URL``, which pyarrow itself ignores).
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path


def is_uri(path: str | os.PathLike) -> bool:
    return str(path).startswith("s3://")


def join(root: str | os.PathLike, *parts: str) -> str:
    """Join path parts under a local directory or a URI (always with '/')."""
    root = str(root)
    if is_uri(root):
        return posixpath.join(root, *parts)
    return os.path.join(root, *parts)


_filesystems: dict[tuple, object] = {}


def _split_s3(uri: str):
    """``(pyarrow S3FileSystem, "bucket/key")``.

    The filesystem is cached per process and AWS environment: a DataLoader worker forked
    from a process that already read from S3 must build its own, because the AWS SDK's
    connections and threads do not survive a fork.
    """
    from ecom2f.storage import s3 as storage_s3

    key = (os.getpid(), *(os.environ.get(name) for name in storage_s3.AWS_ENV))
    filesystem = _filesystems.get(key)
    if filesystem is None:
        filesystem = storage_s3.pyarrow_filesystem("s3://probe", storage_s3.environment_options())[0]
        _filesystems.clear()  # entries of a parent process or an older environment are stale
        _filesystems[key] = filesystem
    return filesystem, uri[len("s3://"):]


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
