"""``python -m ray_jobs.evaluate --config C [--storage URI] [key=value ...]`` (same as ``ecom2f evaluate``)."""

import sys

from ecom2f.steps.pipeline_cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("evaluate", sys.argv[1:]))
