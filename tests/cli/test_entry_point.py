"""The one entry point: one parser built from an explicit list of command modules, logging set
up in one place, and every ``UserError`` turned into one line and exit status 2."""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys

import pytest

from ecom2f.cli import build_parser, main, steps
from ecom2f.cli.main import COMMAND_MODULES, one_line
from ecom2f.errors import MissingStepError, UserError
from tests.conftest import REPO_ROOT

STEP_COMMANDS = ["train-parent", "build-depth", "depth-labels", "tune-gate", "evaluate", "report", "pipeline"]
TOOL_COMMANDS = ["config", "data", "submit", "model-flops", "pq", "predict", "serve", "convert"]


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    return dict(action.choices)


def _python(code: str) -> subprocess.CompletedProcess:
    """``python -c code`` in a fresh process (what it imports or configures stays there)."""
    return subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120,
                          cwd=REPO_ROOT)


def test_the_parser_has_every_step_and_tool_in_order():
    commands = _subcommands(build_parser())
    assert list(commands) == STEP_COMMANDS + TOOL_COMMANDS
    assert list(_subcommands(commands["config"])) == ["show"]
    assert list(_subcommands(commands["data"])) == ["synth", "check"]


def test_every_step_command_takes_the_same_run_config_arguments():
    commands = _subcommands(build_parser())
    for name in STEP_COMMANDS:
        args = commands[name].parse_args(["--config", "c.yaml", "--storage", "s3://b/r", "--run", "x", "a.b=1", "c=2"])
        assert (args.config, args.storage, args.run, args.overrides) == ("c.yaml", "s3://b/r", "x", ["a.b=1", "c=2"])
        # --config is optional (--run RUN alone uses the run's saved configuration); naming neither is
        # refused when the command starts (tests/cli/test_run_only.py).
        assert commands[name].parse_args(["--run", "runs/demo"]).config is None


def test_every_cli_module_that_adds_commands_is_listed():
    """A command module left out of COMMAND_MODULES would silently lose its commands."""
    defining = set()
    for path in (REPO_ROOT / "ecom2f" / "cli").glob("*.py"):
        tree = ast.parse(path.read_text())
        if any(isinstance(node, ast.FunctionDef) and node.name == "add_commands" for node in tree.body):
            defining.add(f"ecom2f.cli.{path.stem}")
    assert defining == {module.__name__ for module in COMMAND_MODULES}


def test_a_command_module_that_does_not_import_fails_loudly():
    """No silent skipping: a command module that is not found (which the old parser skipped) is a bug,
    and every `ecom2f` command says so."""
    code = "import sys; sys.modules['ecom2f.cli.pq'] = None; import ecom2f.cli"
    result = _python(code)
    assert result.returncode == 1
    assert "ModuleNotFoundError: import of ecom2f.cli.pq halted" in result.stderr


def test_building_the_parser_loads_no_heavy_library():
    code = ("import sys; from ecom2f.cli import build_parser; build_parser(); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'ray', 'deepspeed', 'boto3', 'pandas'}))")
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_no_command_prints_the_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "train-parent" in capsys.readouterr().out


@pytest.mark.parametrize(("error", "expected"), [
    (UserError("bad --thing 'x'; use 'y'"), "ecom2f report: error: bad --thing 'x'; use 'y'\n"),
    (MissingStepError("no eval at /r/eval\n  run `ecom2f evaluate` first"),
     "ecom2f report: error: no eval at /r/eval run `ecom2f evaluate` first\n"),
])
def test_a_user_error_raised_anywhere_in_a_command_is_one_line_and_exit_2(error, expected, monkeypatch, capsys):
    def fail(args):
        raise error

    monkeypatch.setattr(steps, "run_report", fail)
    assert main(["report", "--config", "c.yaml"]) == 2
    captured = capsys.readouterr()
    assert captured.err == expected and captured.out == ""


def test_any_other_exception_is_a_bug_and_keeps_its_traceback(monkeypatch):
    def fail(args):
        raise KeyError("a bug")

    monkeypatch.setattr(steps, "run_report", fail)
    with pytest.raises(KeyError, match="a bug"):
        main(["report", "--config", "c.yaml"])


def test_the_exit_status_of_a_command_is_returned(monkeypatch):
    monkeypatch.setattr(steps, "run_report", lambda args: 1)
    assert main(["report", "--config", "c.yaml"]) == 1
    monkeypatch.setattr(steps, "run_report", lambda args: None)
    assert main(["report", "--config", "c.yaml"]) == 0


def test_one_line_joins_lines_and_numbers_a_list_of_problems():
    assert one_line("plain") == "plain"
    assert one_line("invalid configuration (c.yaml):\n  - a.b: unknown key") == \
        "invalid configuration (c.yaml): a.b: unknown key"
    assert one_line("invalid configuration (c.yaml):\n  - a.b: unknown key\n  - c: 'x' is not allowed\n") == \
        "invalid configuration (c.yaml): (1) a.b: unknown key (2) c: 'x' is not allowed"
    assert one_line("storage preflight of s3://b failed:\n\n  AccessDenied\n") == \
        "storage preflight of s3://b failed: AccessDenied"
    assert one_line("x -- y - z") == "x -- y - z"  # a dash inside a line is not a list item


def test_logging_is_set_up_in_one_place():
    """No command or library module configures the root logger; the entry point does, once."""
    configuring = sorted(
        str(path.relative_to(REPO_ROOT))
        for folder in ("ecom2f", "ray_jobs")
        for path in (REPO_ROOT / folder).rglob("*.py")
        if "basicConfig" in path.read_text()
    )
    assert configuring == ["ecom2f/cli/main.py"]


def test_setup_logging_sends_info_to_stderr_once():
    code = ("import logging; from ecom2f.cli.main import setup_logging; setup_logging(); setup_logging(); "
            "logging.getLogger('ecom2f.steps.x').info('hello'); logging.getLogger('ecom2f.steps.x').debug('hidden'); "
            "print(len(logging.getLogger().handlers))")
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "1\n"
    (line,) = result.stderr.splitlines()
    assert line.endswith(" ecom2f.steps.x: hello")  # and DEBUG ('hidden') is below the level


def test_every_ray_jobs_module_is_the_three_line_call_of_its_command():
    commands = _subcommands(build_parser())
    for path in sorted((REPO_ROOT / "ray_jobs").glob("*.py")):
        if path.name == "__init__.py":
            continue
        tree = ast.parse(path.read_text())
        calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
                 and isinstance(node.func, ast.Name) and node.func.id == "main"]
        assert len(calls) == 1, path
        (argv,) = calls[0].args
        assert isinstance(argv, ast.List) and isinstance(argv.elts[0], ast.Constant), path
        assert argv.elts[0].value in commands, path
        assert ast.unparse(argv.elts[1]) == "*sys.argv[1:]", path
