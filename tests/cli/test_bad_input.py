"""Bad input, as a user meets it: real processes through every entry point. A bad configuration
key or a missing earlier step is ONE line on stderr, ``ecom2f <command>: error: <message>``,
exit status 2, no traceback, nothing written. None of these starts Ray: each fails before."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

import pytest

from ecom2f.cli import build_parser
from ecom2f.config import load_config
from tests.conftest import REPO_ROOT

DEMO = "configs/demo_cpu.yaml"
BAD_KEY = "solver.bad_knob=1"
# What the configuration error says about BAD_KEY, after the error prefix.
BAD_KEY_MESSAGE = (f"invalid configuration ({DEMO} with overrides ['{BAD_KEY}']): "
                   "solver.bad_knob: unknown key; valid keys here: 'optimizer', ")


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)  # a missing step must fail before any cluster is looked for
    return subprocess.run(argv, check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env)


def _assert_one_error_line(result: subprocess.CompletedProcess, command: str) -> str:
    """The message of the single ``ecom2f <command>: error: <message>`` line on stderr."""
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    prefix = f"ecom2f {command}: error: "
    assert lines[0].startswith(prefix), lines[0]
    return lines[0].removeprefix(prefix)


def _config_commands() -> list[str]:
    """Every command that takes a run configuration, ``--config`` or ``--run`` (cli/run_config.py; found, so a
    new command is covered). ``convert --config`` names a detectron2 YAML, not a run configuration."""
    (action,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return [name for name, parser in action.choices.items()
            if {"--config", "--run"} <= {flag for option in parser._actions for flag in option.option_strings}]


def _required(command: str) -> list[str]:
    """Placeholder values for the flags ``command`` requires (predict's --input/--output): a bad
    configuration key must be refused before any of them is looked at."""
    (action,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return [item for option in action.choices[command]._actions if option.required and option.option_strings
            for item in (option.option_strings[0], "unused")]


def test_make_demo_with_a_bad_key_prints_one_line_naming_it():
    """The exact command of the issue: `make demo`'s path with a bad key."""
    assert f"$(PY) -m ray_jobs.pipeline --config {DEMO}" in (REPO_ROOT / "Makefile").read_text()
    result = _run([str(REPO_ROOT / ".venv" / "bin" / "python") if (REPO_ROOT / ".venv").is_dir() else sys.executable,
                   "-m", "ray_jobs.pipeline", "--config", DEMO, BAD_KEY])
    assert _assert_one_error_line(result, "pipeline").startswith(BAD_KEY_MESSAGE)


def test_the_commands_that_take_a_config_are_the_seven_steps_and_the_tools_that_read_a_model():
    """Every one of them gets its configuration the same way (cli/run_config.py), --run included; a new
    command that reads a run (predict, serve) joins the list and the tests below."""
    commands = _config_commands()
    assert commands[:7] == ["train-parent", "build-depth", "depth-labels", "tune-gate", "evaluate", "report",
                            "pipeline"]
    assert "model-flops" in commands
    (action,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    for name in commands:
        flags = {flag for option in action.choices[name]._actions for flag in option.option_strings}
        assert "--storage" in flags, name


@pytest.mark.parametrize("command", _config_commands())
def test_every_command_with_a_bad_key_prints_one_line_and_writes_nothing(command, tmp_path):
    result = _run([sys.executable, "-m", "ecom2f", command, *_required(command), "--config", DEMO, "--storage",
                   str(tmp_path / "runs"), BAD_KEY])
    message = _assert_one_error_line(result, command)
    # --storage is applied after the positional overrides, so it is listed after BAD_KEY.
    with_storage = f"['{BAD_KEY}', 'storage.root={tmp_path}/runs']"
    assert message.startswith(BAD_KEY_MESSAGE.replace(f"['{BAD_KEY}']", with_storage))
    assert list(tmp_path.iterdir()) == []


def test_config_show_with_a_bad_key_prints_one_line():
    message = _assert_one_error_line(_run([sys.executable, "-m", "ecom2f", "config", "show", DEMO, BAD_KEY]),
                                     "config show")
    assert message.startswith(BAD_KEY_MESSAGE)


@pytest.mark.parametrize(("entry_point", "command"), [
    (["ecom2f", "train-parent"], "train-parent"),
    (["-m", "ecom2f.cli", "tune-gate"], "tune-gate"),
    (["-m", "ray_jobs.train_parent"], "train-parent"),
    (["-m", "ray_jobs.build_depth_dataset"], "build-depth"),
    (["-m", "ray_jobs.tune_gate"], "tune-gate"),
    (["-m", "ray_jobs.evaluate"], "evaluate"),
    (["-m", "ray_jobs.pipeline"], "pipeline"),
], ids=lambda value: " ".join(value) if isinstance(value, list) else value)
def test_every_entry_point_reports_the_same_way(entry_point, command):
    if entry_point[0] == "ecom2f":  # the script pyproject.toml installs
        script = shutil.which("ecom2f", path=os.path.dirname(sys.executable))
        if script is None:
            pytest.skip("the `ecom2f` script is not installed beside this Python (pip install -e .)")
        argv = [script, *entry_point[1:]]
    else:
        argv = [sys.executable, *entry_point]
    message = _assert_one_error_line(_run([*argv, "--config", DEMO, BAD_KEY]), command)
    assert message.startswith(BAD_KEY_MESSAGE)


# command, the artifact it lacks on a fresh run (a RunLayout attribute), the command that writes it
MISSING_STEPS = [
    ("build-depth", "parent_weights", "ecom2f train-parent"),
    ("depth-labels", "depth", "ecom2f build-depth"),
    ("tune-gate", "depth", "ecom2f build-depth"),
    ("evaluate", "parent_weights", "ecom2f train-parent"),
    ("report", "eval_summary", "ecom2f evaluate"),
]


@pytest.mark.parametrize(("command", "artifact", "remedy"), MISSING_STEPS, ids=[row[0] for row in MISSING_STEPS])
def test_a_missing_earlier_step_is_one_line_naming_it_and_what_to_run(command, artifact, remedy, tmp_path):
    overrides = [f"storage.root={tmp_path / 'runs'}", f"data.root={tmp_path / 'data'}"]
    result = _run([sys.executable, "-m", "ecom2f", command, "--config", DEMO, *overrides])
    message = _assert_one_error_line(result, command)
    missing = getattr(load_config(REPO_ROOT / DEMO, overrides).storage.layout(), artifact)
    assert missing in message and remedy in message
    assert not (tmp_path / "data").exists()  # it failed before generating the synthetic data
    assert not (tmp_path / "runs").exists()  # and left no run folder behind (build-depth and tune-gate made one)


def test_step_1_refused_for_missing_data_leaves_no_run_folder(tmp_path):
    """Step 1 saves the run's config.yaml and takes its lease before it indexes the data: a missing
    annotation file still leaves nothing behind."""
    (tmp_path / "data").mkdir()
    result = _run([sys.executable, "-m", "ecom2f", "train-parent", "--config", DEMO, "--storage",
                   str(tmp_path / "runs"), f"data.root={tmp_path / 'data'}", "data.synthetic=null"])
    message = _assert_one_error_line(result, "train-parent")
    assert message.startswith(f"missing_annotation_file: {tmp_path}/data/synthetic/train/panoptic.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_a_refused_command_keeps_a_run_that_existed(tmp_path):
    """The clean-up takes away only what the refused command made: an existing run's folders stay."""
    run = tmp_path / "runs" / "demo"
    (run / "parent").mkdir(parents=True)
    (run / "notes.txt").write_text("mine")
    result = _run([sys.executable, "-m", "ecom2f", "build-depth", "--config", DEMO, "--storage", str(tmp_path / "runs"),
                   f"data.root={tmp_path / 'data'}"])
    assert "ecom2f train-parent" in _assert_one_error_line(result, "build-depth")
    assert (run / "notes.txt").read_text() == "mine" and (run / "parent").is_dir()


def test_negative_betas_are_one_line_naming_the_flag(tmp_path):
    """`depth-labels --betas -0.01 0` (formerly a traceback from the trade-off's check), before any table is read."""
    result = _run([sys.executable, "-m", "ecom2f", "depth-labels", "--config", DEMO, "--storage", str(tmp_path),
                   "--betas", "-0.01", "0"])
    assert _assert_one_error_line(result, "depth-labels") == (
        "--betas -0.01: a trade-off must be a finite number >= 0 (the quality given up per unit of cost), "
        "e.g. --betas 0 0.01 0.05")
    result = _run([sys.executable, "-m", "ecom2f", "depth-labels", "--config", DEMO, "--betas", "nan"])
    assert _assert_one_error_line(result, "depth-labels").startswith("--betas nan: a trade-off must be")


def test_a_bad_key_fails_before_torch_or_ray_is_imported():
    """Each step command validates its configuration before it imports the library."""
    commands = {command: _required(command) for command in _config_commands()}
    code = (
        "import sys, contextlib, io; from ecom2f.cli import main\n"
        f"for command, required in {commands!r}.items():\n"
        "    with contextlib.redirect_stderr(io.StringIO()):\n"
        f"        assert main([command, *required, '--config', {DEMO!r}, {BAD_KEY!r}]) == 2, command\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'ray', 'deepspeed', 'pandas'}))\n"
    )
    result = _run([sys.executable, "-c", code])
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == "[]\n"
