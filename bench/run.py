"""Runs the benchmark of ``python -m taskbound bench`` from a checkout.

Usage: python bench/run.py [--items N] [--limit N] [--rounds N]
                           [--loop asyncio|uvloop]
"""

import sys

from taskbound._bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
