"""``python -m ray_jobs.build_depth_dataset ARGS`` is ``ecom2f build-depth ARGS`` (a Ray job's driver)."""
import sys

from ecom2f.cli import main

if __name__ == "__main__":
    sys.exit(main(["build-depth", *sys.argv[1:]]))
