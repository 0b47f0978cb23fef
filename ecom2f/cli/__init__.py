"""The ``ecom2f`` command: one entry point for every step and tool (``python -m ecom2f`` too).

| file | what |
|---|---|
| ``main.py`` | the parser, logging, and one line + exit status 2 for every ``UserError`` |
| ``run_config.py`` | ``--config/--storage/--run KEY=VALUE...`` and the run configuration they name |
| ``steps.py`` | the step commands: train-parent, build-depth, depth-labels, tune-gate, evaluate, report, pipeline |
| ``config.py``, ``data.py``, ``submit.py``, ``model_flops.py``, ``pq.py`` | the tools, one per command |
"""

from ecom2f.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
