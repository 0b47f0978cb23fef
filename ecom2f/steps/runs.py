"""What every job does first: take the run's storage settings, prove its storage, make its folders."""

from __future__ import annotations

from ecom2f import storage
from ecom2f.config import Config
from ecom2f.storage import RunLayout


def open_run(config: Config) -> RunLayout:
    """The run's layout, once its storage is known to work, before any Ray or GPU work.

    The ``storage`` section's S3 settings (retries, multipart sizes) become this process's
    and travel to the job's Ray workers (:func:`run_environment`); the run root is probed
    (write, read back, delete: a missing bucket or bad credentials fail here, in seconds).
    """
    storage.configure(config.storage.s3_options())
    layout = config.storage.layout()
    storage.preflight(layout.run_uri)
    layout.create()
    return layout


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
