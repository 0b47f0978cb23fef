"""Step 1 on Ray: ``python -m ray_jobs.train_parent --config C [--storage URI] [key=value ...]``."""

import sys

from ecom2f.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-parent", *sys.argv[1:]]))
