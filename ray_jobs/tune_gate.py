"""Step 3 on Ray: ``python -m ray_jobs.tune_gate --config C [--storage URI] [key=value ...]``."""

import sys

from ecom2f.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune-gate", *sys.argv[1:]]))
