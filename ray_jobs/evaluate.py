"""``python -m ray_jobs.evaluate ARGS`` is ``ecom2f evaluate ARGS`` (a Ray job's driver)."""
import sys

from ecom2f.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
