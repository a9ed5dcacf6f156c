"""Command line: ``python -m taskbound bench [options]``."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
taskbound: a bounded asyncio TaskGroup, with limiters shared across groups.
The command line runs the benchmark: taskbound beside the event loop's own
cost, the stdlib patterns (asyncio.TaskGroup + Semaphore, gather) and the
peers that are installed, on the same work in one process, with ratios
measured side by side in the same run."""


def parser() -> argparse.ArgumentParser:
    from . import __version__
    from ._bench import add_arguments
    top = argparse.ArgumentParser(
        prog="python -m taskbound", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("--version", action="version",
                     version=f"taskbound {__version__}")
    commands = top.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    bench = commands.add_parser(
        "bench", help="run the benchmark (python -m taskbound bench --help "
                      "lists its options)",
        description="Run the benchmark with its embedded default workloads.")
    add_arguments(bench)
    return top


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    from ._bench import run
    return run(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
