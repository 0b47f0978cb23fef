"""``python -m ray_jobs.tune_gate ...``: ``ecom2f tune-gate ...`` as a Ray job's entry point."""
import sys

from ecom2f.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune-gate", *sys.argv[1:]]))
