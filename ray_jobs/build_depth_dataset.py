"""``python -m ray_jobs.build_depth_dataset ...``: ``ecom2f build-depth ...`` as a Ray job's entry point."""
import sys

from ecom2f.cli import main

if __name__ == "__main__":
    sys.exit(main(["build-depth", *sys.argv[1:]]))
