"""``python -m ray_jobs.pipeline ARGS`` is ``ecom2f pipeline ARGS`` (a Ray job's driver)."""
import sys

from ecom2f.cli import main

if __name__ == "__main__":
    sys.exit(main(["pipeline", *sys.argv[1:]]))
