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
