"""The GPU check (scripts/gpu_check.sh) checked without a GPU: its dry run passes here, and fails
when the check has rotted; its parts (the import analysis, the import blocker, the results
plugin, the report) do what the check relies on."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "gpu_check.sh"
GPU_SCRIPTS = REPO_ROOT / "scripts" / "gpu"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"gpu_check_{name}", GPU_SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def _dry_run(out, **env):
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("GPU_CHECK_", "GPU_BUNDLE_"))}
    clean.update(PYTHON=sys.executable, **env)
    return subprocess.run(["bash", str(SCRIPT), "--dry-run", str(out)], cwd=REPO_ROOT, env=clean,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_dry_run_passes_within_a_minute(tmp_path):
    start = time.monotonic()
    result = _dry_run(tmp_path)
    seconds = time.monotonic() - start
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["status"] == "pass" and report["mode"] == "dry-run"
    stages = {s["stage"]: s["status"] for s in report["stages"]}
    assert stages == {name: "pass" for name in
                      ("device", "syntax", "files", "imports", "entry-points", "collect", "bench-smoke")}
    # Both benchmarks ran their tiny problems and left tables for the report.
    assert {b["name"] for b in report["benchmarks"]} == {"op", "model"}
    assert all(t["rows"] for b in report["benchmarks"] for t in b["tables"])
    markdown = (tmp_path / "gpu_check.md").read_text()
    assert markdown.startswith("# GPU check (dry run): PASS")
    assert "Deformable attention: kernel vs grid_sample reference" in markdown
    assert seconds < 60, f"the dry run took {seconds:.0f} s; CI allows it a minute"


def test_dry_run_fails_when_the_bundle_lacks_a_needed_package(tmp_path):
    bundle = (REPO_ROOT / "scripts" / "gpu_bundle.txt").read_text()
    rotted = tmp_path / "bundle.txt"
    rotted.write_text("\n".join(line for line in bundle.splitlines() if not line.startswith("pydantic==")))
    result = _dry_run(tmp_path / "out", GPU_BUNDLE_LIST=str(rotted))
    assert result.returncode != 0
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert report["status"] == "fail"
    assert {s["stage"]: s["status"] for s in report["stages"]}["imports"] == "fail"
    log = (tmp_path / "out" / "gpu_check.log").read_text()
    assert "error: pydantic: imported at import time" in log
    # pydantic_core, still listed, needs nothing else, but pydantic's absence is named.
    assert "scripts/gpu_bundle.txt" in log


def test_dry_run_that_runs_out_of_time_still_reports_and_fails(tmp_path):
    result = _dry_run(tmp_path, GPU_CHECK_SECONDS="20")  # less than any stage needs
    assert result.returncode != 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["status"] == "fail"
    statuses = [s["status"] for s in report["stages"]]
    assert statuses[0] == "timeout" and "pass" not in statuses, statuses
    assert "deadline" in report["stages"][0]["note"]


# ----------------------------------------------------------------------------- the import analysis
def _write(root, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def test_import_analysis_sorts_eager_lazy_guarded_and_missing_imports(tmp_path):
    imports = _load("imports")
    _write(tmp_path, {
        "pkg/__init__.py": "import pkg_init_dep\n",
        "pkg/core.py": """
            from typing import TYPE_CHECKING
            import json
            import eager_dep.sub
            from pkg import helpers
            from . import relative_sibling
            try:
                import optional_dep
            except ImportError:
                optional_dep = None
            if TYPE_CHECKING:
                import typing_only_dep

            def load():
                import lazy_dep
                from pkg import lazily_reached

            class Thing:
                import class_body_dep
            """,
        "pkg/helpers.py": "import helper_dep\nfrom pkg.moved_away import x\n",
        "pkg/relative_sibling.py": "",
        "pkg/lazily_reached.py": "import reached_lazily_dep\n",
        "tests/test_core.py": "import pkg.core\n",
        "tests/conftest.py": "import conftest_dep\n",
    })
    result = imports.walk(tmp_path, [tmp_path / "tests" / "test_core.py"], built=set())
    eager = {m for m, use in result.third_party.items() if use.eager}
    lazy = {m for m, use in result.third_party.items() if not use.eager}
    assert eager == {"json", "typing", "eager_dep", "pkg_init_dep", "helper_dep", "class_body_dep", "conftest_dep"}
    assert lazy == {"lazy_dep", "reached_lazily_dep"}  # imported at module level, but of a lazily imported module
    assert result.missing_first_party == ["pkg/helpers.py:2: imports pkg.moved_away, which does not exist in this repository"]

    device = [imports.Package("eager-dep", None, ("eager_dep",), "device:1")]
    bundle = [imports.Package("helper-dep", "1.0", ("helper_dep",), "bundle:1")]
    errors, _ = imports.check_modules(result, imports.stdlib_names(), device, bundle, {"lazy_dep": "never called"})
    named = {e.split(":")[0] for e in errors}
    # Provided: json/typing (stdlib), eager_dep (device), helper_dep (bundle), lazy_dep (lazy only).
    assert named == {"pkg/helpers.py", "pkg_init_dep", "class_body_dep", "conftest_dep", "reached_lazily_dep"}


def test_import_analysis_refuses_lazy_only_modules_imported_eagerly(tmp_path):
    imports = _load("imports")
    _write(tmp_path, {"pkg/__init__.py": "", "pkg/a.py": "import boto3\n"})
    result = imports.walk(tmp_path, [tmp_path / "pkg" / "a.py"], built=set())
    errors, _ = imports.check_modules(result, imports.stdlib_names(), [], [], {"boto3": "S3 only"})
    assert len(errors) == 1 and errors[0].startswith("boto3: imported at import time at pkg/a.py:1")


def test_bundle_pins_must_match_the_constraints(tmp_path):
    imports = _load("imports")
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("# pins\nhjson==3.1.0\n")
    bundle = [imports.Package("hjson", "3.0.0", ("hjson",), "gpu_bundle.txt:3")]
    errors, _ = imports.check_bundle(bundle, [], constraints)
    assert errors == ["gpu_bundle.txt:3: hjson==3.0.0 but constraints.txt pins 3.1.0: use the project's pin"]


def test_the_shipped_bundle_list_parses_with_pins_and_import_names():
    imports = _load("imports")
    bundle = {p.name: p for p in imports.read_packages(REPO_ROOT / "scripts" / "gpu_bundle.txt")}
    assert all(p.version for p in bundle.values())
    assert bundle["pydantic-core"].imports == ("pydantic_core",)
    assert bundle["typing-extensions"].imports == ("typing_extensions",)
    device = {p.name: p for p in imports.read_packages(GPU_SCRIPTS / "device_packages.txt")}
    assert device["pillow"].imports == ("PIL",) and device["torch"].version == "2.11.0"
    assert not set(bundle) & {"torch", "numpy", "scipy"}  # never shadow the machine's own


# ----------------------------------------------------------------------------- blocker, plugin, report
def test_blocker_makes_the_absent_modules_unimportable():
    env = dict(os.environ, PYTHONPATH=str(GPU_SCRIPTS))
    env.pop("ECOM2F_GPU_ALLOWED", None)
    env.pop("ECOM2F_GPU_BLOCKED", None)
    for module in ("boto3", "moto", "ray", "botocore.config"):
        result = subprocess.run([sys.executable, "-c", f"import block_imports; import {module}"],
                                env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode != 0
        assert "ModuleNotFoundError" in result.stderr and "the GPU machine has no" in result.stderr, module
    fine = subprocess.run([sys.executable, "-c", "import block_imports, json, pytest"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert fine.returncode == 0, fine.stderr


def test_results_plugin_writes_every_outcome_as_it_happens(tmp_path):
    (tmp_path / "test_sample.py").write_text(textwrap.dedent("""
        import pytest

        def test_pass(record_property):
            record_property("images_per_s", 12.5)

        def test_fail():
            assert 1 == 2, "one is not two"

        def test_skip():
            pytest.skip("no GPU here")

        @pytest.fixture
        def broken():
            raise RuntimeError("fixture broke")

        def test_error(broken):
            pass
        """))
    results = tmp_path / "results.jsonl"
    env = dict(os.environ, PYTHONPATH=str(GPU_SCRIPTS), ECOM2F_GPU_RESULTS=str(results))
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "results_plugin", "-p", "no:cacheprovider",
                    str(tmp_path / "test_sample.py")], cwd=tmp_path, env=env, capture_output=True, timeout=120)
    records = {r["nodeid"].split("::")[-1]: r for r in map(json.loads, results.read_text().splitlines())}
    assert {k: r["outcome"] for k, r in records.items()} == {
        "test_pass": "passed", "test_fail": "failed", "test_skip": "skipped", "test_error": "error"}
    assert records["test_pass"]["properties"] == {"images_per_s": 12.5}
    assert "one is not two" in records["test_fail"]["message"]
    assert records["test_skip"]["message"] == "Skipped: no GPU here"
    assert "fixture broke" in records["test_error"]["message"]


def test_report_shows_failures_timeouts_and_benchmarks(tmp_path):
    report = _load("report")
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    stages = [
        {"stage": "build", "status": "pass", "rc": 0, "seconds": 41.0, "budget": 240, "note": ""},
        {"stage": "tests-ops", "status": "fail", "rc": 1, "seconds": 12.0, "budget": 150, "note": ""},
        {"stage": "tests-train", "status": "timeout", "rc": 124, "seconds": 180.0, "budget": 180,
         "note": "stopped after its 180 s budget"},
    ]
    (work / "stages.jsonl").write_text("".join(json.dumps(s) + "\n" for s in stages))
    (work / "results-tests-ops.jsonl").write_text(
        json.dumps({"kind": "test", "nodeid": "tests/gpu/test_op_cuda.py::test_a", "outcome": "passed",
                    "seconds": 1.0, "message": "", "properties": {"relative_error": "1e-7"}}) + "\n"
        + json.dumps({"kind": "test", "nodeid": "tests/gpu/test_op_cuda.py::test_b", "outcome": "failed",
                      "seconds": 2.0, "message": "AssertionError: 0.3 < 1e-5", "properties": {}}) + "\n"
        + '{"kind": "test", "nodeid": "cut short')  # a line a killed stage left half-written
    (work / "results-tests-train.jsonl").write_text("")
    (work / "device.json").write_text(json.dumps({"gpu": "NVIDIA H200", "driver": "580.159.04"}))
    (work / "bench-op.json").write_text(json.dumps({"name": "op", "title": "Deformable attention", "notes": [],
                                                    "tables": [{"title": "t", "columns": ["case", "ms"],
                                                                "rows": [["1024x1024 N=8", "1.25"]], "notes": []}]}))
    (work / "tests-train.log").write_text("\n".join(f"line {i}" for i in range(400)))
    report.main([str(work), str(out), "--final"])
    data = json.loads((out / "gpu_check.json").read_text())
    assert data["status"] == "fail"
    assert data["tests"]["summary"] == {"passed": 1, "failed": 1}
    markdown = (out / "gpu_check.md").read_text()
    assert markdown.startswith("# GPU check: FAIL")
    assert "| tests-train | timeout | 180.0 | 180 | stopped after its 180 s budget |" in markdown
    assert "AssertionError: 0.3 < 1e-5" in markdown and '{"relative_error": "1e-7"}' in markdown
    assert "| 1024x1024 N=8 | 1.25 |" in markdown and "| build of ecom2f._C (s) | 41 (pass) |" in markdown
    log = (out / "gpu_check.log").read_text()
    assert "line 399" in log and "line 100\n" not in log  # each stage's tail only

    (work / "stages.jsonl").write_text(json.dumps(stages[0]) + "\n")
    for path in work.glob("results-*.jsonl"):
        path.unlink()
    report.main([str(work), str(out)])
    assert json.loads((out / "gpu_check.json").read_text())["status"] == "incomplete"  # not --final yet
    report.main([str(work), str(out), "--final"])
    assert json.loads((out / "gpu_check.json").read_text())["status"] == "pass"
