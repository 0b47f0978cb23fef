"""One writer per run: a lease in the run's storage, taken when a job starts and kept alive while it runs.

The lease is one small JSON object (``RunLayout.lease``): the holder's host, pid, job id, start
time, a random token, and its time to live. It is

- **created atomically**: on S3 with a conditional PUT (``If-None-Match: *``: the server refuses
  when the object exists); locally by ``os.link`` of a complete temporary file (fails when the
  name exists), under an ``flock`` of ``<lease>.lock`` that also serialises take-overs;
- **renewed** by a heartbeat thread every ``ttl / 4`` (on S3 a PUT conditional on the ETag the
  holder last wrote, ``If-Match``, so a lease someone else took over is never overwritten);
- **expired** when not renewed for ``ttl`` seconds, measured by the storage's own clock (S3: the
  object's ``LastModified`` against the response's ``Date``; locally the file's mtime), so the
  clocks of different machines do not matter. A holder on this machine whose process is gone
  (same host and pid namespace, pid dead or reused) has expired at once;
- **taken over** when expired, or at once with ``force`` (``ecom2f ... --force-unlock``, or
  ``ECOM2F_FORCE_UNLOCK=1``): for when the holder is known to be gone before its lease expires;
- **released** (deleted) when the job ends, also when it fails (the process exits through
  ``atexit``); a SIGKILLed job leaves its lease to expire.

A second job on a held run refuses at start with :class:`RunLockedError`, naming the holder
and how to proceed. A holder whose lease was taken over finds out at its next heartbeat and
logs an error (its later writes may conflict with the new holder's).

The lease holds no credentials, no command line and no configuration.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import datetime
import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from ecom2f.storage import s3 as storage_s3
from ecom2f.storage.errors import RunLockedError, StorageConflictError, StorageError
from ecom2f.storage.files import is_s3

log = logging.getLogger(__name__)

TTL_ENV = "ECOM2F_LEASE_TTL_S"  # seconds; tests shorten it
FORCE_ENV = "ECOM2F_FORCE_UNLOCK"  # "1": take the lease over whoever holds it
DEFAULT_TTL_S = 120.0


def lease_ttl_s() -> float:
    raw = os.environ.get(TTL_ENV)
    return float(raw) if raw else DEFAULT_TTL_S


def force_requested() -> bool:
    return os.environ.get(FORCE_ENV, "").strip().lower() in ("1", "true", "yes")


# ----------------------------------------------------------------------------- the holder


def _now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 of proc(5), counted after the command name


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _job_id() -> str:
    """The Ray job submission id when run by ``ecom2f submit`` / Ray Jobs, else a fresh id."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if raw:
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            submission = json.loads(raw).get("metadata", {}).get("job_submission_id")
            if submission:
                return str(submission)
    return f"local-{uuid.uuid4().hex[:12]}"


@dataclasses.dataclass(frozen=True)
class Holder:
    """Who holds a lease. ``renewed`` is the holder's clock, for people; expiry uses the storage's."""

    host: str
    pid: int
    job_id: str
    started: str
    renewed: str
    ttl_s: float
    token: str
    pid_namespace: str = ""
    pid_start: str | None = None

    @classmethod
    def me(cls, ttl_s: float, job_id: str | None = None) -> Holder:
        now = _now_iso()
        return cls(socket.gethostname(), os.getpid(), job_id or _job_id(), now, now, ttl_s, uuid.uuid4().hex,
                   _pid_namespace(), _process_start(os.getpid()))

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), indent=2).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Holder | None:
        try:
            fields = json.loads(data)
            return cls(**{f.name: fields[f.name] for f in dataclasses.fields(cls) if f.name in fields})
        except (ValueError, TypeError, KeyError):
            return None  # unreadable: treated as expired by the caller only once its age says so

    def gone_from_this_machine(self) -> bool:
        """The holder ran in this machine's pid namespace and its process no longer exists, or it is
        this process and no longer holds it (its release failed, e.g. during an S3 outage)."""
        if self.host != socket.gethostname() or self.pid_namespace != _pid_namespace() or not self.pid_namespace:
            return False
        start = _process_start(self.pid)
        if self.pid == os.getpid() and start == self.pid_start:
            return self.token not in _live_tokens
        return start is None or (self.pid_start is not None and start != self.pid_start)

    def describe(self) -> str:
        return f"job {self.job_id} (host {self.host}, pid {self.pid}, started {self.started})"


@dataclasses.dataclass
class Observed:
    """The lease as found: its holder (None if unreadable), a version for conditional writes, its age."""

    holder: Holder | None
    version: str | None
    age_s: float


_live_tokens: set[str] = set()  # tokens of the leases this process holds now


class _Conflict(Exception):
    """Someone else created or changed the lease between our read and our write."""


# ----------------------------------------------------------------------------- backends


class _LocalBackend:
    """A file; every change under an ``flock`` of ``<lease>.lock``, every write atomic."""

    def __init__(self, uri: str):
        self.path = Path(uri)
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    @contextlib.contextmanager
    def locked(self):
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a+") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def read(self) -> Observed | None:
        try:
            data, mtime = self.path.read_bytes(), self.path.stat().st_mtime
        except FileNotFoundError:
            return None
        holder = Holder.from_json(data)
        return Observed(holder, holder.token if holder else None, max(0.0, time.time() - mtime))

    def _temporary(self, holder: Holder) -> Path:
        temporary = self.path.with_name(f".{self.path.name}.tmp-{uuid.uuid4().hex[:12]}")
        with open(temporary, "wb") as handle:
            handle.write(holder.to_json())
            handle.flush()
            os.fsync(handle.fileno())
        return temporary

    def create(self, holder: Holder) -> str:
        temporary = self._temporary(holder)
        try:
            os.link(temporary, self.path)  # atomic, and fails if the name exists
        except FileExistsError:
            raise _Conflict from None
        finally:
            temporary.unlink(missing_ok=True)
        return holder.token

    def replace(self, holder: Holder, version: str | None) -> str:
        current = self.read()
        if current is None or current.version != version:
            raise _Conflict
        os.replace(self._temporary(holder), self.path)
        return holder.token

    def delete(self, version: str | None) -> None:
        current = self.read()
        if current is not None and current.version == version:
            self.path.unlink(missing_ok=True)


class _S3Backend:
    """An object; creation with ``If-None-Match: *``, changes with ``If-Match: <etag>``."""

    def __init__(self, uri: str):
        self.uri = uri
        self.options = storage_s3.environment_options()

    @contextlib.contextmanager
    def locked(self):
        yield  # the conditional requests are the lock

    def read(self) -> Observed | None:
        found = storage_s3.read_versioned(self.uri, self.options)
        if found is None:
            return None
        data, etag, age = found
        return Observed(Holder.from_json(data), etag, age)

    def _put(self, holder: Holder, **condition) -> str:
        try:
            return storage_s3.put_if(self.uri, holder.to_json(), self.options, **condition)
        except StorageConflictError:
            raise _Conflict from None

    def create(self, holder: Holder) -> str:
        return self._put(holder, absent=True)

    def replace(self, holder: Holder, version: str | None) -> str:
        return self._put(holder, etag=version)

    def delete(self, version: str | None) -> None:
        current = self.read()
        if current is not None and current.version == version:
            storage_s3.delete(self.uri, False, self.options)


def _backend(uri: str):
    return _S3Backend(uri) if is_s3(uri) else _LocalBackend(uri)


# ----------------------------------------------------------------------------- the lease


def _refusal(uri: str, holder: Holder | None, age_s: float, ttl_s: float) -> RunLockedError:
    who = holder.describe() if holder else "an unreadable lease"
    left = max(0.0, (holder.ttl_s if holder else ttl_s) - age_s)
    return RunLockedError(
        f"the run is in use by another job: {uri} is held by {who}, renewed {age_s:.0f} s ago, expires in "
        f"{left:.0f} s unless renewed. One job writes a run at a time: wait for that job to finish (or stop it), "
        "or use another storage.run; if it is gone (its machine was lost), rerun after the lease expires, or now "
        "with --force-unlock (ECOM2F_FORCE_UNLOCK=1)"
    )


class RunLease:
    """A held lease: :meth:`acquire` takes it, a heartbeat thread renews it, :meth:`release` gives it back."""

    def __init__(self, uri: str, holder: Holder, version: str, backend) -> None:
        self.uri, self.holder, self.version = uri, holder, version
        self._backend = backend
        self._stop = threading.Event()
        self.lost = False
        _live_tokens.add(holder.token)
        self._thread = threading.Thread(target=self._heartbeat, name=f"ecom2f-lease-{holder.token[:6]}", daemon=True)
        self._thread.start()

    @classmethod
    def acquire(cls, uri: str, ttl_s: float | None = None, force: bool | None = None,
                job_id: str | None = None) -> RunLease:
        """Take the lease at ``uri``; raises :class:`RunLockedError` while another job holds it."""
        ttl_s = lease_ttl_s() if ttl_s is None else ttl_s
        force = force_requested() if force is None else force
        backend, holder = _backend(uri), Holder.me(ttl_s, job_id)
        for _ in range(5):
            with backend.locked():
                current = backend.read()
                try:
                    if current is None:
                        return cls(uri, holder, backend.create(holder), backend)
                    reason = cls._takeover_reason(current, force)
                    if reason is None:
                        raise _refusal(uri, current.holder, current.age_s, ttl_s)
                    version = backend.replace(holder, current.version)
                except _Conflict:
                    continue  # another job moved first: look again
            previous = current.holder.describe() if current.holder else "an unreadable lease"
            log.warning("took over the lease %s from %s (%s)", uri, previous, reason)
            return cls(uri, holder, version, backend)
        raise RunLockedError(f"could not take the lease {uri}: other jobs keep changing it; is another job starting "
                             "on the same run? Use another storage.run or wait for it")

    @staticmethod
    def _takeover_reason(current: Observed, force: bool) -> str | None:
        ttl = current.holder.ttl_s if current.holder else lease_ttl_s()
        if force:
            return "--force-unlock"
        if current.age_s > ttl:
            return f"not renewed for {current.age_s:.0f} s, more than its {ttl:g} s"
        if current.holder is not None and current.holder.gone_from_this_machine():
            return f"its process {current.holder.pid} on this machine is gone or no longer holds it"
        return None

    def _heartbeat(self) -> None:
        period = max(0.05, self.holder.ttl_s / 4)
        while not self._stop.wait(period):
            try:
                self.renew()
            except StorageError as error:  # an outage: the job's own writes fail too; keep trying
                log.warning("could not renew the lease %s: %s", self.uri, error)
            if self.lost:
                return

    def renew(self) -> None:
        renewed = dataclasses.replace(self.holder, renewed=_now_iso())
        try:
            with self._backend.locked():
                self.version = self._backend.replace(renewed, self.version)
            self.holder = renewed
        except _Conflict:
            self.lost = True
            current = self._backend.read()
            who = current.holder.describe() if current and current.holder else "nobody (the lease was deleted)"
            log.error("lost the lease %s: it is now held by %s; this job's writes may conflict with theirs",
                      self.uri, who)

    def release(self) -> None:
        if os.getpid() != self.holder.pid:
            return  # a forked child exiting: the lease is its parent's
        _live_tokens.discard(self.holder.token)
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        if self.lost:
            return
        with contextlib.suppress(StorageError), self._backend.locked():
            self._backend.delete(self.version)


# ----------------------------------------------------------------------------- this process's leases

_held: dict[str, list] = {}  # uri -> [RunLease, how many open_run calls hold it]
_held_lock = threading.Lock()


def _key(uri: str) -> str:
    return uri if is_s3(uri) else str(Path(uri).resolve())


def hold(uri: str) -> RunLease:
    """Take the lease for this process, or count one more user of the one it holds (a pipeline's steps)."""
    uri = _key(uri)
    with _held_lock:
        entry = _held.get(uri)
        if entry is not None and not entry[0].lost:
            entry[1] += 1
            return entry[0]
        lease = RunLease.acquire(uri)
        _held[uri] = [lease, 1]
        return lease


def let_go(uri: str) -> None:
    """One user fewer; the last one releases the lease."""
    uri = _key(uri)
    with _held_lock:
        entry = _held.get(uri)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _held[uri]
    entry[0].release()


@atexit.register
def _release_all() -> None:
    with _held_lock:
        leases = [entry[0] for entry in _held.values()]
        _held.clear()
    for lease in leases:
        lease.release()
