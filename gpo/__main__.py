"""`python -m gpo` is the `gpo` command."""

import sys

from gpo.cli import main

sys.exit(main())
