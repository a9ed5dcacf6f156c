"""Command line: ``python -m taskbound bench [options]``."""

import sys


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "bench":
        print("usage: python -m taskbound bench [--items N] [--limit N] "
              "[--rounds N] [--loop asyncio|uvloop]", file=sys.stderr)
        return 2
    from ._bench import main as bench
    return bench(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
