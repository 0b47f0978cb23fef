"""Exceptions of :mod:`ecom2f.storage`; each message names the URI and what to check."""

from __future__ import annotations

from ecom2f.errors import UserError


class StorageError(UserError, OSError):
    """A storage operation failed; the message says on which URI and why."""


class StorageNotFoundError(StorageError, FileNotFoundError):
    """No object or file at the URI."""


class StorageBucketNotFoundError(StorageNotFoundError):
    """The S3 bucket itself does not exist."""


class StoragePermissionError(StorageError, PermissionError):
    """The credentials are valid but not allowed to do this."""


class StorageCredentialsError(StorageError, PermissionError):
    """No credentials, or the server rejected them (unknown key id, wrong secret, expired)."""


class StorageConnectionError(StorageError, ConnectionError):
    """The endpoint could not be reached in time."""


class StoragePreflightError(StorageError):
    """The start-of-job probe (write, read back, delete) failed; nothing else was started."""


class StorageNotSharedError(StorageError):
    """A local storage root on a Ray cluster of several nodes, not declared a shared filesystem."""


class CorruptArtifactError(StorageError):
    """An artifact's bytes differ from the checksum its step's manifest recorded (truncated or altered)."""


class RunLockedError(StorageError):
    """Another job holds the run's lease (one writer per run); the message names the holder and what to do."""


class StorageConflictError(StorageError):
    """A conditional write found the object created or changed by someone else since it was read."""
