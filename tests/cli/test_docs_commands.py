"""Every ``ecom2f`` command the README and docs/ show parses with today's parser, and the ones
that take seconds run: the docs cannot drift from the code again.

Commands are read from fenced code blocks (``bash``/``sh``/``console`` or unlabelled), with
backslash continuations joined and ``# comments`` dropped. Synopsis lines (``[--flag ...]``,
``...``, ``C``/``URI`` placeholders) describe a shape, not a command, and are skipped.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest

from ecom2f.cli.main import build_parser
from tests.conftest import REPO_ROOT

DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\s*$")
SYNOPSIS = re.compile(r"\[-|\.\.\.|\s(C|URI|DIR|SRC|DST)(\s|$)")
# Commands that finish in seconds on this machine and write nothing outside a temporary folder.
QUICK = ("config show", "model-flops")


def _blocks(text: str):
    language, lines = None, None
    for line in text.splitlines():
        fence = FENCE.match(line.strip())
        if fence and lines is None:
            language, lines = fence.group(1), []
        elif fence:
            if language in ("", "bash", "sh", "shell", "console"):
                yield lines
            language, lines = None, None
        elif lines is not None:
            lines.append(line)


def _commands(lines: list[str]):
    joined, current = [], ""
    for line in lines:
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        joined.append(current.strip())
        current = ""
    for line in joined:
        line = line.removeprefix("$ ")
        if line.startswith("ecom2f "):
            yield line


def documented_commands() -> list[tuple[str, str]]:
    found = []
    for path in DOCS:
        for block in _blocks(path.read_text()):
            for command in _commands(block):
                words = shlex.split(command, comments=True)
                if not SYNOPSIS.search(" ".join(words)):
                    quoted = " ".join(map(shlex.quote, words))
                    found.append((f"{path.relative_to(REPO_ROOT)}: {quoted[:70]}", quoted))
    return found


COMMANDS = documented_commands()


def test_the_docs_show_commands():
    files = {label.split(":")[0] for label, _ in COMMANDS}
    assert "README.md" in files and len(COMMANDS) >= 15, sorted(files)


@pytest.mark.parametrize("command", [c for _, c in COMMANDS], ids=[label for label, _ in COMMANDS])
def test_documented_command_parses(command):
    parser = build_parser()
    args = parser.parse_args(shlex.split(command)[1:])
    assert callable(getattr(args, "func", None)), command
    if shlex.split(command)[1] == "submit":  # its remainder is a command of its own
        inner = [word for word in args.command if word != "--"]
        assert inner and callable(getattr(build_parser().parse_args(inner), "func", None)), command


@pytest.mark.parametrize("command", [c for _, c in COMMANDS if any(f"ecom2f {q}" in c for q in QUICK)])
def test_quick_documented_command_runs(command):
    result = subprocess.run([sys.executable, "-m", "ecom2f", *shlex.split(command)[1:]], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip(), command


def test_make_targets_named_in_the_readme_exist():
    makefile = (REPO_ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, flags=re.MULTILINE))
    named = set(re.findall(r"`make ([\w-]+)`", (REPO_ROOT / "README.md").read_text()))
    assert named and named <= targets, named - targets


def test_files_the_docs_link_exist():
    missing = []
    for path in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)\)", path.read_text()):
            if "://" not in target and not (path.parent / target).exists():
                missing.append(f"{path.name} -> {target}")
    assert not missing, missing
