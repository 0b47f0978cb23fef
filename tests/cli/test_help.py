"""Every subcommand's ``--help`` describes each flag and shows its default."""

from __future__ import annotations

import argparse

import pytest

from ecom2f.cli import build_parser
from ecom2f.cli.main import _subparsers


def _commands() -> dict[str, argparse.ArgumentParser]:
    return {parser.prog: parser for parser in _subparsers(build_parser())}


def _described(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [action for action in parser._actions
            if not isinstance(action, argparse._HelpAction | argparse._SubParsersAction)]


@pytest.mark.parametrize("prog", list(_commands()))
def test_every_flag_is_described_and_shows_its_default(prog):
    parser = _commands()[prog]
    text = " ".join(parser.format_help().split())  # argparse wraps lines
    for action in _described(parser):
        name = action.option_strings[0] if action.option_strings else action.dest
        assert action.help and action.help.strip(), f"{prog} {name}: no help"
        if action.option_strings and action.default not in (None, False, [], argparse.SUPPRESS):
            shown = " ".join(action.help.split())
            assert f"{shown} (default: {action.default})" in text or "default" in action.help, \
                f"{prog} {name}: default {action.default!r} not shown"


def test_defaults_appear_in_the_help_text():
    text = " ".join(_commands()["ecom2f data synth"].format_help().split())
    assert "--num-images N how many images (default: 200)" in text
    assert "--image-size PX square side in pixels (default: 160)" in text
    assert "--overwrite replace OUT_DIR if it already holds files" in text  # an off switch shows no default
    text = " ".join(_commands()["ecom2f depth-labels"].format_help().split())
    assert "(default: the run's gate.betas)" in text and "(default: layers)" in text
