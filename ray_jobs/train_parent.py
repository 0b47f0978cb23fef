"""``python -m ray_jobs.train_parent ARGS`` is ``ecom2f train-parent ARGS`` (a Ray job's driver)."""
import sys

from ecom2f.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-parent", *sys.argv[1:]]))
