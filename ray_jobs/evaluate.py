"""``python -m ray_jobs.evaluate ...``: ``ecom2f evaluate ...`` as a Ray job's entry point."""
import sys

from ecom2f.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
