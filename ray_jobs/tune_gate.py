"""``python -m ray_jobs.tune_gate ARGS`` is ``ecom2f tune-gate ARGS`` (a Ray job's driver)."""
import sys

from ecom2f.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune-gate", *sys.argv[1:]]))
