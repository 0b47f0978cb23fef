import sys

from ecom2f.cli import main

sys.exit(main())
