"""``python -m p2preg`` — the same entry point as the ``p2preg`` console script."""

import sys

from p2preg.cli import main

sys.exit(main())
