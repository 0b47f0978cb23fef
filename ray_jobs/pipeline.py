"""``python -m ray_jobs.pipeline ...``: ``ecom2f pipeline ...`` as a Ray job's entry point."""
import sys

from ecom2f.cli import main

if __name__ == "__main__":
    sys.exit(main(["pipeline", *sys.argv[1:]]))
