"""One workload of the bench, N times, for an instruction count that
repeats where timings do not:

    N=3000 PYTHONMALLOC=malloc valgrind --tool=callgrind \\
        python bench/instructions.py WORKLOAD [asyncio|uvloop]

minus the same with N=0, over N, is the count per item. WORKLOAD is one of
task_floor, spawn, create_task, amap, gather, as_completed (limit 100,
items of `await asyncio.sleep(0)`), limiter, semaphore, switch_floor (100
tasks share 10 tokens, `async with` around a sleep(0), N entries),
limiter_alone, semaphore_alone (one task, N entries), amap_limiter,
amap_adaptive (amap(limit=100) with a Limiter(100), or an AdaptiveLimiter
held at 100 tokens: the difference is the cost of the hold samples).
"""

from __future__ import annotations

import asyncio
import os
import sys

import taskbound
from taskbound import _bench, _benchlimiter

N = int(os.environ.get("N", "3000"))
LIMIT = 100


async def item(i):
    await asyncio.sleep(0)
    return i


def contender(name: str):
    """The bench's own contender of that name, on bare sleep(0) items (no
    probe), as a workload of N items at limit 100."""
    found, _ = _bench.contenders()
    run = next(c for c in found if c.name == name).run
    return lambda: run(N, LIMIT, item)


WORKLOADS = {
    "task_floor": contender("task floor"),
    "spawn": contender("BoundedTaskGroup.spawn [C]"),
    "create_task": contender("BoundedTaskGroup.create_task [C]"),
    "amap": contender("amap [C]"),
    "gather": contender("gather [C]"),
    "as_completed": contender("as_completed [C]"),
    # The bench's own limiter workloads (100 tasks share 10 tokens).
    "limiter": lambda: _benchlimiter._shared(taskbound.Limiter, N),
    "semaphore": lambda: _benchlimiter._shared(asyncio.Semaphore, N),
    "switch_floor": lambda: _benchlimiter._switch_floor(N),
    "limiter_alone": lambda: _benchlimiter._alone(taskbound.Limiter, N),
    "semaphore_alone": lambda: _benchlimiter._alone(asyncio.Semaphore, N),
}


def amap_with(make):
    """amap(limit=100) over N trivial items, with make() as its limiter."""
    async def ok(_):
        return None

    async def run():
        async for _ in taskbound.amap(ok, range(N), limit=LIMIT,
                                      limiter=make()):
            pass
    return run


WORKLOADS["amap_limiter"] = amap_with(lambda: taskbound.Limiter(LIMIT))
WORKLOADS["amap_adaptive"] = amap_with(lambda: taskbound.AdaptiveLimiter(
    LIMIT, min_tokens=LIMIT, max_tokens=LIMIT))


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in WORKLOADS:
        print(__doc__, file=sys.stderr)
        return 2
    run = WORKLOADS[sys.argv[1]]
    if sys.argv[2:] == ["uvloop"]:
        import uvloop
        uvloop.run(run())
    else:
        asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
