"""``ecom2f config show``: prints the resolved configuration, fails with the problems listed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from ecom2f.cli import main
from ecom2f.config import load_config

REPO = Path(__file__).resolve().parents[2]
DEMO = str(REPO / "configs" / "demo_cpu.yaml")


def test_show_prints_every_key_resolved_with_overrides(capsys):
    assert main(["config", "show", DEMO, "solver.base_lr=2e-4", "parent.exits=[2,4,6]"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    expected = load_config(DEMO, ["solver.base_lr=2e-4", "parent.exits=[2,4,6]"]).model_dump(mode="json", by_alias=True)
    assert printed == expected
    assert printed["solver"]["base_lr"] == 2e-4 and printed["parent"]["exits"] == [2, 4, 6]


def test_show_one_section_as_json(capsys):
    assert main(["config", "show", DEMO, "--section", "ray", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "ray": {"address": None, "num_workers": 2, "use_gpu": False, "cpus_per_worker": 1.0, "gpus_per_worker": None, "resources": {}}
    }


def test_invalid_config_exits_2_with_the_problems_on_stderr(capsys):
    assert main(["config", "show", DEMO, "solver.base_lrr=1", "parent.alpha=cubic"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"ecom2f config show: invalid configuration ({DEMO} with overrides ['solver.base_lrr=1', 'parent.alpha=cubic']):\n"
        "  - solver.base_lrr: unknown key; did you mean 'base_lr'?\n"
        "  - parent.alpha: 'cubic' is not allowed; allowed: 'constant', 'linear', 'quadratic'\n"
    )


def test_unknown_section_and_missing_file(capsys, tmp_path):
    assert main(["config", "show", DEMO, "--section", "solvers"]) == 2
    assert "no section 'solvers'; sections: model, data, solver" in capsys.readouterr().err
    assert main(["config", "show", str(tmp_path / "none.yaml")]) == 2
    assert capsys.readouterr().err == f"ecom2f config show: configuration file {tmp_path / 'none.yaml'} does not exist\n"


def test_module_entry_point_runs_as_a_process():
    result = subprocess.run(
        [sys.executable, "-m", "ecom2f.cli", "config", "show", DEMO, "--section", "storage"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["storage"]["run"] == "demo_cpu"
