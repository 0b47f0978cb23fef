"""What every job does first: take the run's storage settings, prove its storage, make its folders,
and take the run's lease (one writer per run); and what it does last: give the lease back."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ecom2f import storage
from ecom2f.config import Config
from ecom2f.storage import RunLayout
from ecom2f.storage import lease as run_lease


def open_run(config: Config) -> RunLayout:
    """The run's layout, once its storage is known to work and this job holds the run, before any
    Ray or GPU work.

    The ``storage`` section's S3 settings (retries, multipart sizes) become this process's
    and travel to the job's Ray workers (:func:`run_environment`); the run root is probed
    (write, read back, delete: a missing bucket or bad credentials fail here, in seconds); then
    the run's lease is taken (:mod:`ecom2f.storage.lease`): another job writing the same run
    makes this one refuse here with :class:`~ecom2f.storage.errors.RunLockedError`, naming it.
    The lease is held until :func:`close_run` (or the process's end); the same process may open
    a run again (a pipeline and its steps) and then closes it as often.
    """
    storage.configure(config.storage.s3_options())
    layout = config.storage.layout()
    storage.preflight(layout.run_uri)
    layout.create()
    run_lease.hold(layout.lease)
    return layout


def close_run(config: Config) -> None:
    """This job is done with the run (also after a failure): the last close gives the lease back."""
    run_lease.let_go(config.storage.layout().lease)


@contextlib.contextmanager
def writing_run(config: Config) -> Iterator[RunLayout]:
    """``with writing_run(config) as layout:`` :func:`open_run` ... :func:`close_run`, also on failure."""
    layout = open_run(config)
    try:
        yield layout
    finally:
        close_run(config)


def run_environment(config: Config) -> dict[str, str]:
    """Environment variables every Ray worker of the run needs (its S3 settings)."""
    return storage.options_environment(config.storage.s3_options())


def worker_config(config_dict: dict, source: str) -> Config:
    """The run's configuration inside a Ray worker or actor, with the run's storage settings applied.

    A worker is another process: the driver's :func:`open_run` did not configure it, so every
    worker that rebuilds the configuration from the driver's dict goes through here.
    """
    from ecom2f.config import config_from_dict

    config = config_from_dict(config_dict, source=source)
    storage.configure(config.storage.s3_options())
    return config
