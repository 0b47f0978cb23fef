"""``ecom2f config show``: prints the resolved configuration, fails with the problems on one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from ecom2f.cli import main
from ecom2f.config import Config, load_config

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


def test_invalid_config_exits_2_with_every_problem_on_one_line(capsys):
    """Issue 12: the problems, formerly one per line, are numbered on the one error line."""
    assert main(["config", "show", DEMO, "solver.base_lrr=1", "parent.alpha=cubic"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"ecom2f config show: error: invalid configuration ({DEMO} with overrides "
        "['solver.base_lrr=1', 'parent.alpha=cubic']): "
        "(1) solver.base_lrr: unknown key; did you mean 'base_lr'? "
        "(2) parent.alpha: 'cubic' is not allowed; allowed: 'constant', 'linear', 'quadratic'\n"
    )


def test_unknown_section_and_missing_file(capsys, tmp_path):
    assert main(["config", "show", DEMO, "--section", "solvers"]) == 2
    sections = ", ".join(Config.model_fields)
    assert sections.startswith("model, data, solver")
    assert capsys.readouterr().err == f"ecom2f config show: error: no section 'solvers'; sections: {sections}\n"
    assert main(["config", "show", str(tmp_path / "none.yaml")]) == 2
    assert capsys.readouterr().err == (
        f"ecom2f config show: error: configuration file {tmp_path / 'none.yaml'} does not exist\n"
    )


def test_config_without_an_action_prints_its_help(capsys):
    assert main(["config"]) == 2
    assert "show" in capsys.readouterr().out


def test_module_entry_point_runs_as_a_process():
    result = subprocess.run(
        [sys.executable, "-m", "ecom2f.cli", "config", "show", DEMO, "--section", "storage"],
        check=False, capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["storage"]["run"] == "demo"
