"""The suite's own checks must catch what they promise to."""

from __future__ import annotations

import pytest


def test_a_coroutine_left_in_a_cycle_fails_the_run(run):
    """The `run` fixture collects the cycles a run leaves, although it
    leaves the objects alive before the run out of the collection."""
    async def work():
        pass

    async def main():
        class Holder:
            pass
        holder = Holder()
        holder.coroutine = work()
        holder.itself = holder     # freed only by the collector

    with pytest.raises(AssertionError, match="never awaited"):
        run(main())
