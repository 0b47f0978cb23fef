"""``python -m ray_jobs.pipeline --config C [--storage URI] [key=value ...]`` (same as ``ecom2f pipeline``)."""

import sys

from ecom2f.steps.pipeline_cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("pipeline", sys.argv[1:]))
