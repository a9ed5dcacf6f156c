"""A stress run of the C core for valgrind's memcheck (see .ci/run):

    PYTHONMALLOC=malloc valgrind --tool=memcheck python tests/memcheck_stress.py

Runs every leak-check scenario (spawn/success, spawn/error, spawn/cancel,
create_task/abort, streaming break) on asyncio's loop and on uvloop, then
the nested-limiter deadlock and a group bounded by an external source (the
protocol taskbound.redis uses), a few hundred times each.
"""

from __future__ import annotations

import asyncio
import sys

import leakcheck
import uvloop
from toysource import toy_source_type

from taskbound import DeadlockError, _taskbound
from taskbound._helpers import Helpers

CYCLES = int(sys.argv[1]) if len(sys.argv) > 1 else 200


async def deadlock() -> None:
    limiter = _taskbound.Limiter(4)

    async def sub():
        await asyncio.sleep(0)

    async def intermediate():
        await asyncio.sleep(0)
        async with _taskbound.BoundedTaskGroup(limiter=limiter) as inner:
            for _ in range(3):
                await inner.spawn(sub())

    try:
        async with _taskbound.BoundedTaskGroup(limiter=limiter) as outer:
            for _ in range(10):
                await outer.spawn(intermediate())
    except* DeadlockError:
        pass
    assert limiter.borrowed_tokens == 0


ToySource = toy_source_type(_taskbound.ExternalSource)


async def external() -> None:
    toy = ToySource(2)
    async with _taskbound.BoundedTaskGroup(limiter=toy) as tg:
        for _ in range(4):
            await tg.spawn(asyncio.sleep(0))
        waiting = [tg.create_task(asyncio.sleep(0)) for _ in range(3)]
        waiting[1].cancel()
    assert toy.borrowed == 0 and not toy.line


def main() -> int:
    helpers = Helpers.of(_taskbound)
    for new_loop in (asyncio.new_event_loop, uvloop.new_event_loop):
        shared = _taskbound.Limiter(3)   # a limiter belongs to one loop
        scenarios = leakcheck.scenarios(_taskbound, helpers, shared)
        scenarios["deadlock"] = lambda i: deadlock()
        scenarios["external source"] = lambda i: external()
        loop = new_loop()
        for name, scenario in scenarios.items():
            async def run(scenario=scenario):
                for i in range(CYCLES):
                    await scenario(i)
            loop.run_until_complete(run())
            print(f"{new_loop.__module__}: {name} x {CYCLES}", flush=True)
        loop.close()
        assert shared.borrowed_tokens == 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
