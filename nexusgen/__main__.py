"""`python -m nexusgen` is the same as the `nexusgen` command."""

import sys

from nexusgen.cli import main

sys.exit(main())
