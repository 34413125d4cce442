"""`python -m cde_rag.cli`: the same as the `cde-rag` script."""

import sys

from . import main

sys.exit(main())
