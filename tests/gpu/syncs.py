"""Records every host-device synchronisation CUDA itself sees in a block, and who caused it.

``torch.cuda.set_sync_debug_mode("warn")`` makes each synchronising call (a blocking copy,
``.item()``, ``nonzero``, a stream synchronize, ... also those made inside C++) issue a
warning. :class:`CudaSyncs` turns them into :class:`Sync` records that name the innermost
frame of the project (``ecom2f/...``), so a test can allow the known ones (the Hungarian
matcher's one copy of its cost matrix per criterion call) and show where the others come from.
"""

from __future__ import annotations

import dataclasses
import traceback
import warnings
from pathlib import Path

import torch

import ecom2f

PACKAGE_DIR = str(Path(ecom2f.__file__).resolve().parent)


@dataclasses.dataclass(frozen=True)
class Sync:
    project: str  # innermost "ecom2f/...py:line" frame, or "" when none
    caller: str  # innermost frame outside torch, e.g. a DeepSpeed file
    message: str

    def __str__(self) -> str:
        return f"{self.project or '(no project frame)'} via {self.caller}: {self.message[:120]}"


def _frames() -> tuple[str, str]:
    project = caller = ""
    torch_root = str(Path(torch.__file__).parent)
    for frame in reversed(traceback.extract_stack()[:-3]):  # drop this helper and warnings' frames
        where = f"{frame.filename}:{frame.lineno}"
        if not caller and not frame.filename.startswith(torch_root) and "warnings" not in frame.filename:
            caller = where
        if frame.filename.startswith(PACKAGE_DIR):
            project = "ecom2f" + where[len(PACKAGE_DIR):]
            break
    return project, caller


class CudaSyncs:
    """Context manager; ``syncs`` lists a :class:`Sync` per synchronising CUDA call in the block."""

    def __init__(self) -> None:
        self.syncs: list[Sync] = []

    def __enter__(self) -> CudaSyncs:
        torch.cuda.synchronize()  # work queued before the block is not the block's
        self._previous_mode = torch.cuda.get_sync_debug_mode()
        self._catcher = warnings.catch_warnings()
        self._catcher.__enter__()
        warnings.simplefilter("always")
        self._previous_show = warnings.showwarning
        warnings.showwarning = self._show
        torch.cuda.set_sync_debug_mode("warn")
        return self

    def _show(self, message, category, filename, lineno, file=None, line=None) -> None:
        text = str(message)
        if "synchroniz" in text:
            self.syncs.append(Sync(*_frames(), text))
        else:
            self._previous_show(message, category, filename, lineno, file, line)

    def __exit__(self, *exc) -> None:
        torch.cuda.set_sync_debug_mode(self._previous_mode)
        warnings.showwarning = self._previous_show
        self._catcher.__exit__(*exc)

    def outside(self, *allowed_files: str) -> list[Sync]:
        """The syncs whose project frame is in none of ``allowed_files`` (e.g. ``"matcher.py"``)."""
        return [s for s in self.syncs if not any(f"/{name}:" in f"/{s.project}" for name in allowed_files)]
