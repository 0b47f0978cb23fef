"""Step 2 on Ray: ``python -m ray_jobs.build_depth_dataset --config C [--storage URI] [key=value ...]``."""

import sys

from ecom2f.steps.depth_cli import main

if __name__ == "__main__":
    sys.exit(main(["build-depth", *sys.argv[1:]]))
