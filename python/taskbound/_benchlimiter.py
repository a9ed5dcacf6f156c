"""The bench's limiter rows: `async with` entries per second of a Limiter
used directly, against asyncio.Semaphore, in the two ways workers use a
cap: one task alone (nothing waits) and 100 tasks sharing 10 tokens with an
`await asyncio.sleep(0)` inside (90 wait at any time).

RateLimiter is measured against aiolimiter.AsyncLimiter (when installed)
the same two ways: with the rate and burst so high that nobody waits
(entries per second), and with the rate binding (100 tasks under 2,000
starts a second for a few seconds: the rate each achieves after its first
second, as a share of the configured one).

The contended case also runs the *switch floor*: the least a FIFO limiter
that wakes its waiters through the loop's futures must cost there, a bare
line of such futures written inline (each entry one wake through a future
and the sleep(0)). A ratio to the Semaphore above floor / Semaphore cannot
be had that way.
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
    # The cheapest way to the loop's future: asyncio's loop only makes an
    # asyncio.Future(loop=loop) (a Python call less made directly), uvloop
    # makes its own in C.
    plain = (getattr(loop.create_future, "__func__", None)
             is asyncio.BaseEventLoop.create_future)
    future_type = asyncio.Future

    async def worker():
        nonlocal free
        for _ in range(entries // TASKS):
            if free:
                free -= 1
            else:
                future = (future_type(loop=loop) if plain
                          else loop.create_future())
                line.append(future)
                await future
            await asyncio.sleep(0)
            if line:
                line.popleft().set_result(True)
            else:
                free += 1

    await asyncio.gather(*[worker() for _ in range(TASKS)])


RATE_TASKS = 100
UNBOUND_RATE = 200_000.0
BINDING_RATE = 2_000.0


def rate_contenders(modules: dict) -> list[tuple[str, object]]:
    """(name, factory of a rate limiter of `rate` starts a second with a
    burst of `burst`) of each module's RateLimiter and aiolimiter's."""
    found = [(f"RateLimiter [{label}]",
              lambda rate, burst, m=module: m.RateLimiter(rate, 1.0, burst))
             for label, module in modules.items()]
    try:
        import aiolimiter
    except ImportError:
        return found
    # Its bucket holds max_rate: the burst is the rate.
    found.append(("aiolimiter.AsyncLimiter",
                  lambda rate, burst: aiolimiter.AsyncLimiter(rate, 1.0)))
    return found


async def _starts(make, entries: int) -> float:
    limiter = make(UNBOUND_RATE, int(UNBOUND_RATE))

    async def worker():
        for _ in range(entries // RATE_TASKS):
            async with limiter:
                pass

    start = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(RATE_TASKS)])
    return entries / (time.perf_counter() - start)


async def _achieved(make, seconds: float) -> float:
    """Starts per second from the end of the first second to `seconds`,
    over the configured rate: 1.0 is exact."""
    limiter = make(BINDING_RATE, 1)
    loop = asyncio.get_running_loop()
    begin = loop.time()
    warm, end = begin + 1.0, begin + seconds
    counted = 0

    async def worker():
        nonlocal counted
        while loop.time() < end:
            async with limiter:
                if warm <= loop.time() < end:
                    counted += 1

    await asyncio.gather(*[worker() for _ in range(RATE_TASKS)])
    return counted / (seconds - 1.0) / BINDING_RATE


def measure_rates(modules: dict, entries: int, seconds: float, rounds: int,
                  new_loop, loop_kind, progress) -> dict:
    """{"starts": {name: entries/s}, "achieved": {name: share}}, medians
    of interleaved rounds."""
    samples: dict = {"starts": collections.defaultdict(list),
                     "achieved": collections.defaultdict(list)}
    for number in range(1, rounds + 1):
        for name, make in rate_contenders(modules):
            for case, run in (("starts", lambda: _starts(make, entries)),
                              ("achieved", lambda: _achieved(make, seconds))):
                progress(f"rate limiter, round {number}: {case}, {name}")
                loop = new_loop(loop_kind)
                try:
                    samples[case][name].append(loop.run_until_complete(run()))
                finally:
                    loop.close()
    return {case: {name: statistics.median(values)
                   for name, values in rows.items()}
            for case, rows in samples.items()}


def rate_table(entries: int, seconds: float, figures: dict) -> None:
    starts, achieved = figures["starts"], figures["achieved"]
    base = starts.get("aiolimiter.AsyncLimiter")
    print(f"\nrate limiter: {RATE_TASKS} tasks; {entries:,} starts with "
          f"rate and burst {UNBOUND_RATE:,.0f}/s (nobody waits), and "
          f"{seconds:g} s at {BINDING_RATE:,.0f}/s (the rate binds)")
    print(f"  {'contender':<24} {'starts/s':>12} {'x aiolimiter':>13} "
          f"{'achieved/rate':>14}")
    for name, rate in starts.items():
        ratio = f"{rate / base:.2f}" if base else "-"
        print(f"  {name:<24} {rate:>12,.0f} {ratio:>13} "
              f"{achieved[name]:>14.4f}")


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
