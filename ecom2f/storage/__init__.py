"""Artifacts by URI: one interface over local paths and ``s3://`` URIs.

| file | what |
|---|---|
| ``files.py`` | read, write (atomically), list, copy and delete by URI; ``pyarrow_filesystem`` |
| ``s3.py`` | the boto3 client and pyarrow S3 filesystem, with one endpoint / retry resolution |
| ``preflight.py`` | the start-of-job probe of a storage root |
| ``layout.py`` | :class:`RunLayout`: where a run keeps each artifact |
| ``checksums.py`` | the checksums a step's manifest records, and the check every later read makes |
| ``lease.py`` | one writer per run: the lease a job takes at start and keeps alive while it runs |
| ``errors.py`` | the exceptions, each naming the URI and what to check |
"""

from ecom2f.storage.errors import (
    CorruptArtifactError,
    RunLockedError,
    StorageBucketNotFoundError,
    StorageConnectionError,
    StorageCredentialsError,
    StorageError,
    StorageNotFoundError,
    StorageNotSharedError,
    StoragePermissionError,
    StoragePreflightError,
)
from ecom2f.storage.files import (
    DEFAULT_OPTIONS,
    delete,
    download_dir,
    download_file,
    exists,
    is_s3,
    join,
    list_uris,
    pyarrow_filesystem,
    read_bytes,
    read_text,
    upload_dir,
    upload_file,
    write_bytes,
    write_text,
)
from ecom2f.storage.layout import RunLayout
from ecom2f.storage.preflight import preflight
from ecom2f.storage.s3 import S3Options, environment_options, options_environment


def configure(options: S3Options) -> dict[str, str]:
    """Makes ``options`` this process's S3 settings, and those of the processes it starts.

    Storage calls without explicit options use them (:func:`environment_options`); they
    travel as environment variables, so DataLoader workers inherit them and Ray workers get
    them through the job's runtime environment. Returns those variables.
    """
    import os

    variables = options_environment(options)
    os.environ.update(variables)
    return variables

__all__ = [
    "DEFAULT_OPTIONS",
    "CorruptArtifactError",
    "RunLayout",
    "RunLockedError",
    "S3Options",
    "StorageBucketNotFoundError",
    "StorageConnectionError",
    "StorageCredentialsError",
    "StorageError",
    "StorageNotFoundError",
    "StorageNotSharedError",
    "StoragePermissionError",
    "StoragePreflightError",
    "delete",
    "download_dir",
    "download_file",
    "exists",
    "is_s3",
    "join",
    "list_uris",
    "preflight",
    "pyarrow_filesystem",
    "read_bytes",
    "read_text",
    "upload_dir",
    "upload_file",
    "write_bytes",
    "write_text",
    "configure",
    "environment_options",
    "options_environment",
]
