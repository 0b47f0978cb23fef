"""Fault tests (issue 17: killed processes and nodes, S3 outages, one writer per run, corrupted
artifacts, secrets) and the fault injectors other tests use (:mod:`tests.faults.injectors`)."""

from tests.faults.injectors import FailOnce, FailOnceAtIndex, pickle_by_value

__all__ = ["FailOnce", "FailOnceAtIndex", "pickle_by_value"]
