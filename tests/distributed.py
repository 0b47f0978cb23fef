"""Tests use the package's one-process group (kept here so test modules import it by one name)."""

from ecom2f.engine.distributed import single_process_group

__all__ = ["single_process_group"]
