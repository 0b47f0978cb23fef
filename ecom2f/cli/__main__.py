import sys

from ecom2f.cli.main import main

sys.exit(main())
