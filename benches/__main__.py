"""``python -m benches [--quick] [--runs N] [--only GROUP] [-v]``: see :mod:`benches.run`."""

from __future__ import annotations

import sys

from benches.run import main

if __name__ == "__main__":
    sys.exit(main())
