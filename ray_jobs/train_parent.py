"""``python -m ray_jobs.train_parent ...``: ``ecom2f train-parent ...`` as a Ray job's entry point."""
import sys

from ecom2f.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-parent", *sys.argv[1:]]))
