"""Checksums of artifacts: what a step's manifest records, and the check every later read makes.

A step that finishes writes its manifest (``_SUCCESS.json``, or ``gate.json`` beside a gate's
weights) last, with a ``checksums`` object: for each artifact a later step reads, its path
relative to the manifest's folder -> ``{"sha256": hex, "bytes": size}``. A reader passes the
bytes it read through :func:`verify`; a file that was truncated or altered after its step
finished then fails with :class:`CorruptArtifactError`, naming the file, the manifest and the
step to rerun, instead of a parquet, pickle or JSON error somewhere downstream.

A manifest without ``checksums`` (written by an ecom2f before checksums existed) is read as
before, unverified, with one warning per manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
from pathlib import Path

from ecom2f.storage.errors import CorruptArtifactError, StorageNotFoundError
from ecom2f.storage.files import is_s3, join, read_bytes, read_text

log = logging.getLogger(__name__)

CHECKSUMS = "checksums"  # the manifest key
_warned: set[str] = set()


def digest(data: bytes) -> dict:
    """``{"sha256": hex, "bytes": size}`` of ``data``."""
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def file_digest(path: str | os.PathLike) -> dict:
    """:func:`digest` of a local file, read in 1 MiB pieces (weights can be large)."""
    sha, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while piece := handle.read(1 << 20):
            sha.update(piece)
            size += len(piece)
    return {"sha256": sha.hexdigest(), "bytes": size}


def relative_name(manifest_uri: str, uri: str) -> str:
    """``uri``'s path relative to the manifest's folder: the key of its checksum."""
    folder = manifest_uri.rsplit("/", 1)[0] if is_s3(manifest_uri) else str(Path(manifest_uri).parent)
    if is_s3(uri):
        return posixpath.relpath(uri.removeprefix("s3://"), folder.removeprefix("s3://"))
    return Path(os.path.relpath(uri, folder)).as_posix()


def verify(uri: str, data: bytes, expected: dict | None, where: str, rerun: str) -> bytes:
    """``data`` (read from ``uri``) if it matches ``expected``; raises :class:`CorruptArtifactError` if not.

    ``where`` names the record (a manifest's URI); ``rerun`` says what to do (the step to rerun).
    ``expected`` None: nothing recorded, nothing to check.
    """
    if expected is None:
        return data
    found = digest(data)
    if found == {"sha256": expected["sha256"], "bytes": int(expected["bytes"])}:
        return data
    if found["bytes"] != int(expected["bytes"]):
        shorter = " (truncated?)" if found["bytes"] < int(expected["bytes"]) else ""
        what = f"{found['bytes']} bytes where {where} records {expected['bytes']}{shorter}"
    else:
        what = (f"altered: sha256 {found['sha256'][:12]}... where {where} records {expected['sha256'][:12]}... for "
                "the same size")
    raise CorruptArtifactError(f"{uri} is corrupt ({what}); {rerun}")


def read_manifest(manifest_uri: str, rerun: str) -> dict | None:
    """The manifest as a dict, None if there is none; a manifest that is not JSON is corrupt."""
    try:
        text = read_text(manifest_uri)
    except StorageNotFoundError:
        return None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError:
        raise CorruptArtifactError(f"{manifest_uri} is corrupt (not JSON: {len(text)} bytes); {rerun}") from None
    if not isinstance(manifest, dict):
        raise CorruptArtifactError(f"{manifest_uri} is corrupt (not a JSON object); {rerun}")
    return manifest


def recorded(manifest: dict | None, manifest_uri: str) -> dict[str, dict] | None:
    """The manifest's checksums (relative name -> digest), or None for a manifest of an older ecom2f."""
    if manifest is None:
        return None
    checksums = manifest.get(CHECKSUMS)
    if checksums is None and manifest_uri not in _warned:
        _warned.add(manifest_uri)
        log.warning("%s records no checksums (written by an older ecom2f): its files are read unverified",
                    manifest_uri)
    return checksums


def read_verified(uri: str, manifest_uri: str, rerun: str, manifest: dict | None = None) -> bytes:
    """The bytes at ``uri``, checked against the checksum the manifest at ``manifest_uri`` records for it.

    No manifest, or one of an older ecom2f without checksums: the bytes unchecked. A manifest
    with checksums that does not list ``uri``: :class:`CorruptArtifactError` (the file is not
    the step's output). ``manifest``: the manifest already read (saves a read).
    """
    manifest = read_manifest(manifest_uri, rerun) if manifest is None else manifest
    checksums = recorded(manifest, manifest_uri)
    data = read_bytes(uri)
    if checksums is None:
        return data
    name = relative_name(manifest_uri, uri)
    if name not in checksums:
        raise CorruptArtifactError(f"{uri} is not listed in {manifest_uri} (not written by the step that wrote "
                                   f"it); {rerun}")
    return verify(uri, data, checksums[name], manifest_uri, rerun)


def check_listed(manifest_uri: str, checksums: dict[str, dict] | None, found: list[str], prefix: str,
                 rerun: str) -> None:
    """Every file the manifest lists under ``prefix`` is among ``found`` (URIs) and none more."""
    if checksums is None:
        return
    names = {relative_name(manifest_uri, uri) for uri in found}
    listed = {name for name in checksums if name.startswith(prefix)}
    missing, extra = sorted(listed - names), sorted(names - listed)
    if missing:
        raise CorruptArtifactError(f"{join(manifest_uri.rsplit('/', 1)[0], missing[0])} is missing "
                                   f"({len(missing)} files listed in {manifest_uri} are gone); {rerun}")
    if extra:
        raise CorruptArtifactError(f"{join(manifest_uri.rsplit('/', 1)[0], extra[0])} is not listed in "
                                   f"{manifest_uri} ({len(extra)} unlisted files); {rerun}")
