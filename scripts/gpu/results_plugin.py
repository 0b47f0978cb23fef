"""pytest plugin (``-p results_plugin``): each test's result as one JSON line, as soon as it is known.

The GPU check reads these lines into its report. They are appended while the run goes on
(unlike ``--junitxml``, written at the end), so a stage killed by its time limit still
reports every test that finished. Writes to the file named by ``ECOM2F_GPU_RESULTS``; does
nothing when it is unset. One line per test::

    {"kind": "test", "nodeid": ..., "outcome": "passed|failed|skipped|error|xfailed|xpassed",
     "seconds": ..., "message": ..., "properties": {name: value}}

``properties`` are what the test recorded with pytest's ``record_property`` (measurements).
Collection errors give ``{"kind": "collect", "nodeid": ..., "outcome": "error", "message": ...}``.
"""

from __future__ import annotations

import json
import os

import pytest

MESSAGE_CHARS = 1500


def _write(record: dict) -> None:
    path = os.environ.get("ECOM2F_GPU_RESULTS")
    if not path:
        return
    with open(path, "a") as f:
        f.write(json.dumps(record, default=str) + "\n")


def _message(report) -> str:
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2])
    text = getattr(report, "longreprtext", "") or ""
    crash = getattr(getattr(report.longrepr, "reprcrash", None), "message", None)
    if crash and len(text) > MESSAGE_CHARS:  # the assertion line, then the end of the traceback
        return (crash[:500] + "\n...\n" + text[-(MESSAGE_CHARS - 500):]).strip()
    return text[-MESSAGE_CHARS:].strip()


class _Results:
    def __init__(self) -> None:
        self.outcomes: dict[str, dict] = {}

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report) -> None:
        nodeid = report.nodeid
        record = self.outcomes.get(nodeid)
        xfail = hasattr(report, "wasxfail")
        if report.when == "call":
            outcome = ("xfailed" if report.skipped else "xpassed") if xfail else report.outcome
        elif report.failed:
            outcome = "error"  # a fixture failed in setup or teardown
        elif report.skipped:
            outcome = "skipped"
        else:
            outcome = None
        if record is None:
            record = {"kind": "test", "nodeid": nodeid, "outcome": None, "seconds": 0.0, "message": "",
                      "properties": {}}
            self.outcomes[nodeid] = record
        record["seconds"] += report.duration
        record["properties"].update({str(k): v for k, v in report.user_properties})
        if outcome is not None and record["outcome"] not in ("failed", "error"):
            record["outcome"] = outcome
            record["message"] = _message(report) if outcome != "passed" else ""
        if report.when == "teardown":
            _write(self.outcomes.pop(nodeid))

    @pytest.hookimpl
    def pytest_collectreport(self, report) -> None:
        if report.failed:
            _write({"kind": "collect", "nodeid": report.nodeid, "outcome": "error", "message": _message(report)})


def pytest_configure(config) -> None:
    config.pluginmanager.register(_Results(), "ecom2f-gpu-results")
