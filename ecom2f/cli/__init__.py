"""The ``ecom2f`` command: one entry point for every step and tool (``python -m ecom2f`` too).

| file | what |
|---|---|
| ``main.py`` | the parser (every flag's default in its help), logging, and one line + exit status 2 for every ``UserError`` |
| ``run_config.py`` | ``--config/--storage/--run KEY=VALUE...`` and the run configuration they name (``--run RUN`` alone: the run's saved one) |
| ``steps.py`` | the step commands: train-parent, build-depth, depth-labels, tune-gate, evaluate, report, pipeline |
| ``fresh_run.py`` | a command refused before any work leaves no new run folder behind |
| ``known_warnings.py`` | the settings that turn off Ray's, Tune's and DeepSpeed's known harmless warnings |
| ``config.py``, ``data.py``, ``submit.py``, ``model_flops.py``, ``pq.py``, ... | the tools, one per command |
"""

from ecom2f.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
