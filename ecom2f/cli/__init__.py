"""The ``ecom2f`` command: one entry point for every step and tool (``python -m ecom2f`` too)."""

from ecom2f.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
