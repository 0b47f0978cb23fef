"""Sending ``ecom2f`` commands to a Ray cluster as jobs (the Ray Jobs API).

``ecom2f submit -- train-parent --config configs/coco_panoptic_r50.yaml --storage s3://b/runs``
uploads the working directory with the runtime environment of ``cluster/runtime_env.yaml``
to the cluster's dashboard in ``$RAY_ADDRESS`` (``http://host:8265``) and runs
``ecom2f train-parent ...`` there as the job's driver, on the head node. The cluster image
provides the environment and the compiled op; the uploaded copy provides the code (see
docs/cluster.md).

Everything here is a plain function over a ``JobSubmissionClient`` so tests can drive it
against a real local head; ``ecom2f.cli.submit`` is the command.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlparse

import yaml

from ecom2f.errors import UserError

# Ray's packaging of the working directory logs one INFO line per .gitignore it honours (a dozen
# here) and warns that .git and .venv are "now ignored by default": neither concerns ecom2f, whose
# runtime environment excludes them anyway. Their loggers are raised to WARNING / ERROR while
# submitting; Ray's own "Uploading package ..." line stays.
QUIET_RAY_LOGGERS = {"ray._private.runtime_env.packaging": "WARNING", "ray._private.runtime_env.working_dir": "ERROR"}

# Keys of a Ray runtime environment that a cluster job of ecom2f may set. Others (pip,
# conda, container) would rebuild the environment the image already provides: rejected,
# so a typo or a stray `pip:` cannot silently install another torch on every node.
RUNTIME_ENV_KEYS = ("working_dir", "excludes", "env_vars", "py_modules", "config")
TERMINAL_STATUSES = ("SUCCEEDED", "FAILED", "STOPPED")
DEFAULT_RUNTIME_ENV = os.path.join("cluster", "runtime_env.yaml")


class SubmitError(UserError, ValueError):
    """Bad input to ``ecom2f submit``: the message names the value and what to do."""


@dataclass(frozen=True)
class SubmittedJob:
    job_id: str
    address: str
    entrypoint: str

    def instructions(self) -> str:
        """How to follow, inspect and stop the job (the ``ray job`` CLI of the same Ray)."""
        flag = f"--address {shlex.quote(self.address)}"
        return "\n".join(
            [
                f"submitted job {self.job_id}: {self.entrypoint}",
                f"  follow its logs:  ray job logs {flag} --follow {self.job_id}",
                f"  its status:       ray job status {flag} {self.job_id}",
                f"  stop it:          ray job stop {flag} {self.job_id}",
                f"  dashboard:        {self.address}/#/jobs/{self.job_id}",
            ]
        )


def dashboard_address(address: str | None = None) -> str:
    """The Jobs API address: ``address``, else ``$RAY_ADDRESS``; must be ``http(s)://host:port``."""
    value = address or os.environ.get("RAY_ADDRESS")
    if not value:
        raise SubmitError(
            "no cluster address: set RAY_ADDRESS to the cluster's dashboard, e.g. "
            "RAY_ADDRESS=http://127.0.0.1:8265 after `ray dashboard cluster/aws.yaml` "
            "(or `kubectl port-forward svc/ecom2f-head-svc 8265:8265`), or pass --address"
        )
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.hostname or parsed.port is None:
        raise SubmitError(
            f"cluster address {value!r} is not a dashboard URL: jobs go through the Ray Jobs API at "
            "http://HOST:8265 (not ray://HOST:10001 or the GCS address HOST:6379)"
        )
    return value.rstrip("/")


def load_runtime_env(path: str | os.PathLike = DEFAULT_RUNTIME_ENV, working_dir: str | None = None) -> dict[str, Any]:
    """The runtime environment of ``path`` (YAML), with ``working_dir`` made absolute.

    A relative ``working_dir`` is resolved against the current directory, as
    ``ray job submit --runtime-env`` does; ``working_dir=`` replaces the file's value.
    """
    path = Path(path)
    if not path.is_file():
        raise SubmitError(f"runtime environment file {str(path)!r} does not exist; run from the repository root "
                          f"or pass --runtime-env cluster/runtime_env.yaml")
    try:
        env = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise SubmitError(f"runtime environment file {str(path)!r} is not valid YAML: {error}") from None
    if not isinstance(env, dict):
        raise SubmitError(f"runtime environment file {str(path)!r} must hold a mapping, not {type(env).__name__}")
    unknown = sorted(set(env) - set(RUNTIME_ENV_KEYS))
    if unknown:
        raise SubmitError(
            f"runtime environment file {str(path)!r} sets {unknown}: allowed keys are {list(RUNTIME_ENV_KEYS)} "
            "(the cluster image provides the Python environment; build a new image to change it)"
        )
    env_vars = env.get("env_vars") or {}
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items()):
        raise SubmitError(f"env_vars in {str(path)!r} must map names to strings (quote numbers: \"1\")")
    if "RAY_ADDRESS" in env_vars:
        raise SubmitError(f"env_vars in {str(path)!r} sets RAY_ADDRESS: the job's driver gets its cluster from Ray")
    directory = Path(working_dir or env.get("working_dir") or ".").expanduser().resolve()
    if not directory.is_dir():
        raise SubmitError(f"working_dir {str(directory)!r} is not a directory")
    return {**env, "working_dir": str(directory), "env_vars": dict(env_vars)}


def _parse(argv: list[str], parser: argparse.ArgumentParser) -> argparse.Namespace:
    """``argv`` parsed by ``parser``; argparse's usage and error lines become one SubmitError."""
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said), contextlib.redirect_stdout(said):
            return parser.parse_args(argv)
    except SystemExit:
        errors = [line.split(": error: ", 1)[1] for line in said.getvalue().splitlines() if ": error: " in line]
        reason = errors[-1] if errors else "--help prints help, it runs nothing"
        raise SubmitError(f"`ecom2f {shlex.join(argv)}` is not a valid ecom2f command: {reason}; check it with "
                          "`ecom2f <command> --help`") from None


def _validate_here(args: argparse.Namespace, working_dir: str | None) -> None:
    """Runs the command's own checks of its arguments and configuration (``args.validate``, the
    function the command itself starts with) where the configuration file is readable here: a
    path in the working directory or on this machine. An ``s3://`` configuration, an absolute path
    that exists only in the cluster's image, or a run named by ``--run`` alone (its saved
    configuration lives in the cluster's storage) are left to the job."""
    validate = getattr(args, "validate", None)
    if validate is None:
        return
    config = getattr(args, "config", None)
    if config is None:
        if getattr(args, "run", None) is None:  # nothing to read (model-flops --backbone ...): check it all here
            validate(args)
        return
    if "://" in config:
        return
    if not os.path.isabs(config):
        here = Path(working_dir or ".").resolve() == Path.cwd().resolve()
        config = config if here else str(Path(working_dir) / config)
    elif not os.path.isfile(config):
        return
    validate(argparse.Namespace(**{**vars(args), "config": config}))


def entrypoint_for(argv: list[str], working_dir: str | None = None, *, parser: argparse.ArgumentParser) -> str:
    """The shell command of the job: ``ecom2f <argv>``, after checking it as the command would.

    ``argv`` is parsed with ``parser``, the ``ecom2f`` command's own (``ecom2f.cli.build_parser()``,
    passed in because the command imports this module, not the other way round), so a typo
    fails here rather than minutes later on the cluster. A ``--config`` given as a relative
    path must exist inside the working directory, the only files the job will see; the command's
    configuration (file and overrides) is then validated here as the command would validate it.
    """
    argv = list(argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise SubmitError("no command to submit: give one after --, e.g. ecom2f submit -- config show configs/demo_cpu.yaml")
    if argv[0] in ("ecom2f", "submit"):
        raise SubmitError(f"give the ecom2f subcommand without {argv[0]!r}: ecom2f submit -- train-parent --config ...")
    args = _parse(argv, parser)
    if not getattr(args, "func", None):
        raise SubmitError(f"`ecom2f {shlex.join(argv)}` names no runnable command; see `ecom2f --help`")
    config = getattr(args, "config", None)
    if (isinstance(config, str) and "://" not in config and not os.path.isabs(config) and working_dir
            and not (Path(working_dir) / config).is_file()):
        raise SubmitError(f"--config {config!r} is not in the working directory {working_dir!r}, so the job would "
                              "not find it: pass a path relative to the repository root, or an s3:// URI")
    _validate_here(args, working_dir)
    return shlex.join(["ecom2f", *argv])


def job_client(address: str):
    """A Jobs API client of the dashboard at ``address``; nothing listening there is a SubmitError."""
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except ConnectionError:
        raise SubmitError(
            f"no Ray dashboard answers at {address}: start the cluster (ray up cluster/aws.yaml), make its "
            "dashboard reachable here (ray dashboard cluster/aws.yaml, or kubectl port-forward "
            "svc/ecom2f-head-svc 8265:8265), or fix --address / RAY_ADDRESS"
        ) from None
    except RuntimeError as error:  # something answers, but not a Ray dashboard of a usable version
        raise SubmitError(f"{address} did not answer as a Ray dashboard: {error}; check --address / RAY_ADDRESS "
                          "(the dashboard's port, 8265 by default)") from None


def submit(
    argv: list[str],
    address: str | None = None,
    runtime_env: dict[str, Any] | None = None,
    submission_id: str | None = None,
    extra_env: dict[str, str] | None = None,
    entrypoint_num_cpus: float | None = None,
    client=None,
    *,
    parser: argparse.ArgumentParser,
) -> SubmittedJob:
    """Submits ``ecom2f <argv>`` as a Ray job and returns its id (the submission id).

    ``parser`` checks the command (see :func:`entrypoint_for`).
    ``runtime_env`` defaults to :func:`load_runtime_env` of ``cluster/runtime_env.yaml``;
    ``extra_env`` adds environment variables for this job only.
    """
    address = dashboard_address(address)
    runtime_env = dict(runtime_env if runtime_env is not None else load_runtime_env())
    if extra_env:
        if "RAY_ADDRESS" in extra_env:
            raise SubmitError("--env RAY_ADDRESS=...: the job's driver gets its cluster from Ray; do not set it")
        runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), **extra_env}
    entrypoint = entrypoint_for(argv, runtime_env.get("working_dir"), parser=parser)
    if client is None:
        client = job_client(address)
    import logging

    for name, level in QUIET_RAY_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    try:
        job_id = client.submit_job(
            entrypoint=entrypoint,
            runtime_env=runtime_env,
            submission_id=submission_id,
            entrypoint_num_cpus=entrypoint_num_cpus,
            metadata={"submitted_by": "ecom2f submit", "command": entrypoint[:200]},
        )
    except RuntimeError as error:  # the dashboard's answer, e.g. a submission id already taken
        raise SubmitError(f"the cluster at {address} refused the job: {error}") from None
    return SubmittedJob(job_id=job_id, address=address, entrypoint=entrypoint)


def wait_for_job(client, job_id: str, timeout_s: float | None = None, poll_s: float = 1.0,
                 out: TextIO | None = None) -> str:
    """Waits until the job ends, streaming its logs to ``out``; returns its final status.

    Logs come from Ray's own stream (``tail_job_logs``, a websocket to the dashboard), so a
    job that logs for days is not re-read on every poll. Raises ``TimeoutError`` after
    ``timeout_s`` seconds; the job keeps running.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    if out is not None:
        async def stream() -> None:
            async for chunk in client.tail_job_logs(job_id):
                out.write(chunk)
                out.flush()

        try:
            asyncio.run(asyncio.wait_for(stream(), timeout=timeout_s))
        except TimeoutError:
            raise _still_running(job_id, _status(client, job_id), timeout_s) from None
    while True:  # the stream ends with the job; its status may take a moment to follow
        status = _status(client, job_id)
        if status in TERMINAL_STATUSES:
            return status
        if deadline is not None and time.monotonic() > deadline:
            raise _still_running(job_id, status, timeout_s)
        time.sleep(poll_s)


def _status(client, job_id: str) -> str:
    return str(client.get_job_status(job_id)).rsplit(".", 1)[-1]  # "JobStatus.SUCCEEDED" or "SUCCEEDED"


def _still_running(job_id: str, status: str, timeout_s: float | None) -> TimeoutError:
    return TimeoutError(f"job {job_id} is still {status} after {timeout_s:.0f} s; it keeps running "
                        f"(stop it with `ray job stop {job_id}`)")


def parse_env_pairs(pairs: list[str]) -> dict[str, str]:
    """``["A=1", "B=x"]`` -> ``{"A": "1", "B": "x"}``; a pair without ``=`` is an error."""
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SubmitError(f"--env {pair!r} must be NAME=VALUE")
        env[name] = value
    return env


def print_submitted(job: SubmittedJob, out: TextIO | None = None) -> None:
    out = out or sys.stdout  # looked up per call: callers may redirect stdout
    out.write(job.instructions() + "\n")
    out.flush()
