"""The bench's limiter rows: `async with` entries per second of a Limiter
used directly, against asyncio.Semaphore, in the two ways workers use a
cap: one task alone (nothing waits) and 100 tasks sharing 10 tokens with an
`await asyncio.sleep(0)` inside (90 wait at any time).

The contended case also runs the *switch floor*: the least any FIFO
limiter must cost there, a bare line of futures written inline (each entry
one wake through a future and the sleep(0)). A ratio to the Semaphore above
floor / Semaphore cannot be had by any limiter.
"""

from __future__ import annotations

import asyncio
import collections
import statistics
import time

TOKENS = 10
TASKS = 100


async def _alone(make, entries: int) -> None:
    limiter = make(TOKENS)
    for _ in range(entries):
        async with limiter:
            pass


async def _shared(make, entries: int) -> None:
    limiter = make(TOKENS)

    async def worker():
        for _ in range(entries // TASKS):
            async with limiter:
                await asyncio.sleep(0)

    await asyncio.gather(*[worker() for _ in range(TASKS)])


async def _switch_floor(entries: int) -> None:
    loop = asyncio.get_running_loop()
    line: collections.deque = collections.deque()
    free = TOKENS

    async def worker():
        nonlocal free
        for _ in range(entries // TASKS):
            if free:
                free -= 1
            else:
                future = loop.create_future()
                line.append(future)
                await future
            await asyncio.sleep(0)
            if line:
                line.popleft().set_result(True)
            else:
                free += 1

    await asyncio.gather(*[worker() for _ in range(TASKS)])


def contenders(modules: dict) -> list[tuple[str, object]]:
    """(name, limiter factory) of asyncio.Semaphore and each module's
    Limiter ({"C": module, "Python": module})."""
    found = [("asyncio.Semaphore", asyncio.Semaphore)]
    found += [(f"Limiter [{label}]", module.Limiter)
              for label, module in modules.items()]
    return found


def measure(modules: dict, entries: int, rounds: int, new_loop, loop_kind,
            progress) -> dict:
    """{case: {name: entries per second}}, the median of `rounds`
    interleaved rounds, each on a fresh loop."""
    cases = {"alone": _alone, "shared": _shared}
    samples: dict = {case: collections.defaultdict(list) for case in cases}
    for number in range(1, rounds + 1):
        for case, run in cases.items():
            runs = [(name, lambda m=make, r=run: r(m, entries))
                    for name, make in contenders(modules)]
            if case == "shared":
                runs.append(("switch floor",
                             lambda: _switch_floor(entries)))
            for name, make_coro in runs:
                progress(f"limiter, round {number}: {case}, {name}")
                loop = new_loop(loop_kind)
                try:
                    start = time.perf_counter()
                    loop.run_until_complete(make_coro())
                    took = time.perf_counter() - start
                finally:
                    loop.close()
                samples[case][name].append(entries / took)
    return {case: {name: statistics.median(rates)
                   for name, rates in rows.items()}
            for case, rows in samples.items()}


def table(entries: int, figures: dict) -> None:
    titles = {"alone": f"one task, Limiter({TOKENS})",
              "shared": f"{TASKS} tasks share {TOKENS} tokens, "
                        "`await asyncio.sleep(0)` inside"}
    for case, rows in figures.items():
        print(f"\nlimiter: {entries:,} `async with` entries, {titles[case]}")
        base = rows["asyncio.Semaphore"]
        print(f"  {'contender':<24} {'entries/s':>12} {'x Semaphore':>12}")
        for name, rate in rows.items():
            print(f"  {name:<24} {rate:>12,.0f} {rate / base:>12.2f}")
