"""`python -m studio.cli` runs the `studio` command."""

import sys

from studio.cli import main

sys.exit(main())
