"""The nemesis harness of issue 14 from the command line (``make nemesis SEED=... MINUTES=...``).

    python scripts/nemesis/run.py --seed 7 --minutes 30

Needs root (network namespaces), iproute2 and faketime. Exit code 1 when the checker found
anything (lost, resurrected, divergent, unhealed, unanswered, crashed); the summary is printed
and written to WORKDIR/summary.json. ``--help`` lists the options.
"""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[2] / "tests"
sys.path.insert(0, str(TESTS))

from nemesis.run import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
