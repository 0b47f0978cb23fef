"""Where a run keeps its artifacts, and the name of every one of them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ecom2f.storage.files import is_s3, join


@dataclasses.dataclass(frozen=True)
class RunLayout:
    """Where a run keeps its artifacts: ``<root>/<run>/{config.yaml, parent/, depth/, gates/, eval/, report/}``."""

    root: str
    run: str

    SUBDIRECTORIES = ("parent", "depth", "gates", "eval", "report")

    def __post_init__(self) -> None:
        if not self.run or "/" in self.run or self.run in (".", ".."):
            raise ValueError(f"run name {self.run!r}: must be a non-empty name without '/' (e.g. 'coco_r50_parent')")

    @property
    def run_uri(self) -> str:
        return join(self.root, self.run)

    @property
    def config(self) -> str:
        return join(self.run_uri, "config.yaml")

    @property
    def parent(self) -> str:
        return join(self.run_uri, "parent")

    @property
    def depth(self) -> str:
        return join(self.run_uri, "depth")

    @property
    def gates(self) -> str:
        return join(self.run_uri, "gates")

    @property
    def eval(self) -> str:
        return join(self.run_uri, "eval")

    @property
    def report(self) -> str:
        return join(self.run_uri, "report")

    def create(self) -> None:
        """Create the local directories (S3 needs none: prefixes exist once written to)."""
        if is_s3(self.root):
            return
        for name in self.SUBDIRECTORIES:
            Path(join(self.run_uri, name)).mkdir(parents=True, exist_ok=True)
