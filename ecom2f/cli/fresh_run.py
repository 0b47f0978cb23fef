"""A command refused before it did any work leaves no run folder behind.

Every job starts by proving its storage, making the run's folders and taking its lease (``open_run``),
then checks its inputs: a missing earlier step, a bad dataset or initial weights stop it there. On a run
that did not exist before the command, that would leave ``<root>/<run>/{parent,depth,...}``
empty (and, after step 1's start, its ``config.yaml``) for the user to find and wonder about;
the next command would then treat the name as taken. :func:`removed_if_refused` takes them away
again when the command fails with a :class:`~ecom2f.errors.UserError`, and only when the run holds
nothing else, so no artifact is ever deleted.

Local folders only: on S3 an empty "folder" does not exist.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager

from ecom2f.errors import UserError


def _missing_folders(path: str) -> list[str]:
    """``path`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    path = os.path.abspath(path)
    while not os.path.exists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing


def _only_scaffolding(run_dir: str, layout) -> bool:
    """Whether the run holds nothing a job produced: empty folders, its ``config.yaml``, and its lease
    (``_LEASE.json`` and the ``.lock`` file beside it, which outlives the lease)."""
    config = os.path.abspath(layout.config)
    lease = os.path.abspath(layout.lease)
    for folder, _, files in os.walk(run_dir):
        for name in files:
            path = os.path.join(folder, name)
            if path != config and not path.startswith(lease):
                return False
    return True


@contextmanager
def removed_if_refused(config) -> Iterator[None]:
    """Runs the block; if it raises a ``UserError`` and the run's local folder did not exist
    before, removes the folders it made (the run's and any missing parents), provided the run
    holds nothing but empty folders, its ``config.yaml`` and its (released) lease."""
    layout = config.storage.layout()
    if "://" in layout.run_uri:  # s3:// (file:// URIs too: rare, and not worth the parsing)
        yield
        return
    created = _missing_folders(layout.run_uri)
    try:
        yield
    except UserError:
        run_dir = os.path.abspath(layout.run_uri)
        if created and os.path.isdir(run_dir) and _only_scaffolding(run_dir, layout):
            shutil.rmtree(run_dir)
            for folder in created[1:]:  # the parents this command made, while they stay empty
                if os.path.isdir(folder) and not os.listdir(folder):
                    os.rmdir(folder)
        raise
