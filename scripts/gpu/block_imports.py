"""Makes the modules the GPU machine lacks unimportable, to rehearse the GPU check elsewhere.

Load it first: as a pytest plugin (``-p block_imports`` with ``scripts/gpu`` on
``PYTHONPATH``) or with ``python -c "import block_imports; ..."``. It reads:

- ``ECOM2F_GPU_ALLOWED``: a file of importable top-level names, one a line (written by
  ``imports.py --write-allowed``). Imports of other names made by the project's own code (a
  file under the repository, outside any ``site-packages``) fail with ModuleNotFoundError.
  With ``ECOM2F_GPU_BLOCK_STRICT=1``, the modules of every installed distribution that are
  not allowed fail whoever imports them (third-party code too); the standard library's
  private modules (``_sysconfigdata...``) stay importable either way.
- ``ECOM2F_GPU_BLOCKED``: comma-separated names that fail to import whoever asks, allowed or
  not (default ``moto,boto3,botocore,ray``: what the GPU tests must collect without).

Names already imported when this module loads are dropped from ``sys.modules``, so the
next import of them goes through the block too.
"""

from __future__ import annotations

import importlib.abc
import importlib.metadata
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_HERE = str(Path(__file__).resolve())


def _caller_is_project() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if not name.startswith("<frozen") and name != _HERE and "importlib" not in name:
            return name.startswith(str(REPO)) and "site-packages" not in name
        frame = frame.f_back
    return False


class _Blocker(importlib.abc.MetaPathFinder):
    def __init__(self, allowed: set[str] | None, blocked: set[str], strict: set[str]):
        self.allowed, self.blocked, self.strict = allowed, blocked, strict

    def find_spec(self, fullname, path=None, target=None):
        top = fullname.partition(".")[0]
        if top in self.blocked:
            raise ModuleNotFoundError(f"{fullname} is blocked: the GPU machine has no {top}", name=fullname)
        if self.allowed is None or top in self.allowed or "." in fullname:
            return None
        if top in self.strict or _caller_is_project():
            raise ModuleNotFoundError(
                f"No module named {fullname!r} on the GPU machine (neither preinstalled there nor in "
                "scripts/gpu_bundle.txt)", name=fullname,
            )
        return None


def install() -> _Blocker:
    allowed_file = os.environ.get("ECOM2F_GPU_ALLOWED")
    allowed = set(Path(allowed_file).read_text().split()) if allowed_file else None
    blocked = set(filter(None, os.environ.get("ECOM2F_GPU_BLOCKED", "moto,boto3,botocore,ray").split(",")))
    strict = set()
    if allowed is not None and os.environ.get("ECOM2F_GPU_BLOCK_STRICT") == "1":
        strict = set(importlib.metadata.packages_distributions()) - allowed
    blocker = _Blocker(allowed, blocked, strict)
    for name in list(sys.modules):
        top = name.partition(".")[0]
        if name != __name__ and (top in blocked or top in strict):
            del sys.modules[name]
    sys.meta_path.insert(0, blocker)
    return blocker


BLOCKER = install()
