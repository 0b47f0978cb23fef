"""Artifacts by URI: one interface over local paths and ``s3://`` URIs.

Every function takes a URI: a local path (relative or absolute, or ``file://``) or
``s3://bucket/key``. Writes are atomic: a local file is written under a temporary name in
its target directory and renamed (``os.replace``); an S3 object is one PUT, or a multipart
upload that becomes visible only when complete. S3 calls retry with backoff (botocore's
"adaptive" mode by default, see :class:`S3Options`).

``pyarrow_filesystem(uri)`` gives the ``(pyarrow.fs.FileSystem, path)`` pair that Ray
Train's ``RunConfig(storage_path=path, storage_filesystem=fs)`` and parquet I/O want.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from urllib.parse import urlsplit

from ecom2f.storage import s3 as storage_s3
from ecom2f.storage.errors import StorageError, StorageNotFoundError, StoragePermissionError
from ecom2f.storage.s3 import S3Options

# Calls without explicit options use the process's: what the job configured (storage.configure),
# carried to Ray workers and DataLoader workers by environment variables (see s3.OPTION_ENV).
DEFAULT_OPTIONS = S3Options()


def is_s3(uri: str | os.PathLike) -> bool:
    return str(uri).startswith("s3://")


def _local_path(uri: str | os.PathLike) -> Path:
    text = os.fspath(uri)
    if "://" in text:
        parts = urlsplit(text)
        if parts.scheme != "file":
            raise ValueError(
                f"unsupported storage URI {text!r}: use a local path, file:///abs/path or s3://bucket/key"
            )
        text = parts.path
    return Path(text).expanduser()


def join(uri: str | os.PathLike, *parts: str) -> str:
    """Append path components; ``join("s3://b/run", "parent", "x")`` -> ``"s3://b/run/parent/x"``."""
    base = os.fspath(uri)
    if is_s3(base):
        pieces = [base.rstrip("/")] + [part.strip("/") for part in parts if part.strip("/")]
        return "/".join(pieces)
    return str(_local_path(base).joinpath(*parts))


# ----------------------------------------------------------------------------- bytes and text


def read_bytes(uri: str | os.PathLike, options: S3Options | None = None) -> bytes:
    if is_s3(uri):
        return storage_s3.read_bytes(str(uri), storage_s3.effective(options))
    path = _local_path(uri)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise StorageNotFoundError(f"cannot read {path}: no such file") from None
    except PermissionError:
        raise StoragePermissionError(f"cannot read {path}: permission denied; check the file's mode and owner") from None


def write_bytes(uri: str | os.PathLike, data: bytes, options: S3Options | None = None) -> None:
    """Write atomically: readers see the old content or the new one, never a part."""
    if is_s3(uri):
        storage_s3.write_bytes(str(uri), bytes(data), storage_s3.effective(options))
        return
    with _atomic_local_target(_local_path(uri)) as temporary:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())


def read_text(uri: str | os.PathLike, options: S3Options | None = None) -> str:
    return read_bytes(uri, options).decode("utf-8")


def write_text(uri: str | os.PathLike, text: str, options: S3Options | None = None) -> None:
    write_bytes(uri, text.encode("utf-8"), options)


@contextlib.contextmanager
def _atomic_local_target(path: Path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except PermissionError:
        raise StoragePermissionError(f"cannot create directory {path.parent}: permission denied") from None
    # Same directory as the target, so os.replace is a rename within one filesystem.
    temporary = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        yield temporary
        os.replace(temporary, path)
    except PermissionError:
        raise StoragePermissionError(f"cannot write {path}: permission denied; check the directory's mode") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


# ----------------------------------------------------------------------------- files


def upload_file(local_path: str | os.PathLike, uri: str | os.PathLike, options: S3Options | None = None) -> None:
    """Copy a local file to ``uri`` atomically (multipart on S3 above the threshold)."""
    source = Path(local_path)
    if not source.is_file():
        raise StorageNotFoundError(f"cannot upload {source}: no such file")
    if is_s3(uri):
        storage_s3.upload_file(str(source), str(uri), storage_s3.effective(options))
        return
    with _atomic_local_target(_local_path(uri)) as temporary:
        shutil.copyfile(source, temporary)


def download_file(uri: str | os.PathLike, local_path: str | os.PathLike, options: S3Options | None = None) -> None:
    """Copy ``uri`` to a local file atomically."""
    target = Path(local_path)
    with _atomic_local_target(target) as temporary:
        if is_s3(uri):
            storage_s3.download_file(str(uri), str(temporary), storage_s3.effective(options))
        else:
            source = _local_path(uri)
            if not source.is_file():
                raise StorageNotFoundError(f"cannot download {source}: no such file")
            shutil.copyfile(source, temporary)


def upload_dir(local_dir: str | os.PathLike, uri: str | os.PathLike, options: S3Options | None = None) -> int:
    """Copy every file below ``local_dir`` to the same relative names under ``uri``; returns the count.

    Each file lands atomically; the folder as a whole does not (write a marker file last
    if readers must see all or nothing).
    """
    root = Path(local_dir)
    if not root.is_dir():
        raise StorageNotFoundError(f"cannot upload {root}: no such directory")
    files = sorted(path for path in root.rglob("*") if path.is_file())
    for path in files:
        upload_file(path, join(uri, *path.relative_to(root).parts), options)
    return len(files)


def download_dir(uri: str | os.PathLike, local_dir: str | os.PathLike, options: S3Options | None = None) -> int:
    """Copy every file below ``uri`` into ``local_dir`` keeping relative names; returns the count."""
    base = str(uri).rstrip("/") if is_s3(uri) else str(_local_path(uri))
    sources = list_uris(uri, recursive=True, options=options)
    for source in sources:
        relative = source[len(base) :].lstrip("/")
        download_file(source, Path(local_dir) / relative, options)
    return len(sources)


# ----------------------------------------------------------------------------- listing


def exists(uri: str | os.PathLike, options: S3Options | None = None) -> bool:
    """A file/object, or a directory (on S3: any object under ``uri/``), is at ``uri``."""
    if is_s3(uri):
        return storage_s3.exists(str(uri), storage_s3.effective(options))
    return _local_path(uri).exists()


def list_uris(uri: str | os.PathLike, recursive: bool = False, options: S3Options | None = None) -> list[str]:
    """Sorted URIs under the directory ``uri``.

    Non-recursive: the direct children, subdirectories with a trailing "/". Recursive:
    every file below, no directories. A missing directory lists as empty on both
    backends (S3 has no directories to be missing).
    """
    if is_s3(uri):
        return sorted(storage_s3.iter_listing(str(uri), recursive, storage_s3.effective(options)))
    root = _local_path(uri)
    if not root.is_dir():
        return []
    if recursive:
        return sorted(str(path) for path in root.rglob("*") if path.is_file())
    return sorted(str(path) + ("/" if path.is_dir() else "") for path in root.iterdir())


def delete(uri: str | os.PathLike, recursive: bool = False, options: S3Options | None = None) -> int:
    """Delete the file/object at ``uri`` (with ``recursive``, everything below it too).

    Missing targets are not an error. Returns how many files/objects were removed.
    """
    if is_s3(uri):
        return storage_s3.delete(str(uri), recursive, storage_s3.effective(options))
    path = _local_path(uri)
    if path.is_dir():
        if not recursive:
            raise StorageError(f"cannot delete {path}: it is a directory; pass recursive=True to delete it and its contents")
        count = sum(1 for item in path.rglob("*") if item.is_file())
        shutil.rmtree(path)
        return count
    try:
        path.unlink()
        return 1
    except FileNotFoundError:
        return 0


# ----------------------------------------------------------------------------- pyarrow


def pyarrow_filesystem(uri: str | os.PathLike, options: S3Options | None = None):
    """``(pyarrow.fs.FileSystem, path)`` for ``uri``.

    For S3 the path is ``bucket/key`` (no scheme), as Ray Train's
    ``RunConfig(storage_path=path, storage_filesystem=fs)`` requires, and the filesystem
    carries ``AWS_ENDPOINT_URL`` as ``endpoint_override`` (pyarrow ignores the variable).
    Local paths come back absolute.
    """
    if is_s3(uri):
        return storage_s3.pyarrow_filesystem(str(uri), storage_s3.effective(options))
    from pyarrow import fs as pafs

    return pafs.LocalFileSystem(), str(_local_path(uri).resolve())
