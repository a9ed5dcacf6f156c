"""Runs one scenario many times in a fresh process and reports what grew.

    python tests/leakcheck.py IMPL LOOP SCENARIO CYCLES

IMPL is c or python, LOOP asyncio or uvloop. After a warm-up it takes a
census (live objects per type from gc.get_objects(), the reference counts
of the objects every cycle touches, tracemalloc's traced memory), runs
CYCLES more cycles and takes it again; it prints the differences as JSON.
A leak of one object per cycle shows as CYCLES more objects of a type, a
leaked reference as a reference count that grew by CYCLES, anything else
allocated and never freed as traced memory that grew by at least CYCLES
times its size.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import importlib
import json
import sys
import tracemalloc

from helpers import MODULES

WARM_UP = 2_000


class Boom(Exception):
    pass


async def ok(i):
    await asyncio.sleep(0)
    return i


async def fail(i):
    await asyncio.sleep(0)
    raise Boom(i)


async def sleeper(i):
    await asyncio.sleep(3600)


def scenarios(module, helpers, shared):
    Group = module.BoundedTaskGroup

    async def spawn_success(i):
        async with Group(2, limiter=shared) as tg:
            await tg.spawn(ok(i))
            await tg.spawn(ok(i))
            await tg.spawn(ok(i))

    async def spawn_error(i):
        try:
            async with Group(2, limiter=shared) as tg:
                await tg.spawn(ok(i))
                await tg.spawn(fail(i))
                await tg.spawn(sleeper(i))
                await asyncio.sleep(0)
        except* Boom:
            pass

    async def spawn_cancel(i):
        async with Group(2, limiter=shared) as tg:
            running = await tg.spawn(sleeper(i))
            started = tg.create_task(sleeper(i))
            waiting = tg.create_task(sleeper(i))    # no token is free
            await asyncio.sleep(0)
            running.cancel()
            started.cancel()
            waiting.cancel()
            await tg.spawn(ok(i))

    async def create_task_abort(i):
        try:
            async with Group(1, limiter=shared) as tg:
                tg.create_task(fail(i))
                tg.create_task(sleeper(i))
                tg.create_task(ok(i))
        except* Boom:
            pass

    async def stream_break(i):
        async with helpers.amap(ok, range(10), limit=2) as results:
            async for _ in results:
                break
        async with helpers.as_completed((ok(j) for j in range(5)),
                                        limit=2) as done:
            async for _ in done:
                break
        try:
            await helpers.gather(ok(i), fail(i), sleeper(i), limit=2)
        except Boom:
            pass

    async def per_item(i):
        # Items parked on a busy key while others run; a break that drops
        # the parked ones; a task's own limiter and cost in a group.
        per_key = [module.Limiter(1), module.Limiter(2)]
        async for _ in helpers.amap(ok, range(8), limit=3, ordered=False,
                                    item_limiter=lambda j: per_key[j % 2]):
            pass
        async with helpers.amap(ok, range(6), limit=3, limiter=shared,
                                item_limiter=lambda j: per_key[0],
                                item_cost=lambda j: {shared: 2}) as results:
            async for _ in results:
                break
        async with Group(2) as tg:
            await tg.spawn(ok(i), limiter=per_key[1], cost={per_key[1]: 2})

    async def take(n):
        await shared.acquire(n)

    async def weighted(i):
        # A big waiter holding back a small one, cancelled; hold(n); a bad
        # n; now and then a pause that its end's timer lifts.
        await shared.acquire(2)
        big = asyncio.create_task(take(2))
        await asyncio.sleep(0)
        small = asyncio.create_task(take(1))
        await asyncio.sleep(0)
        big.cancel()
        await asyncio.gather(big, return_exceptions=True)
        await small
        shared.release(3)
        async with shared.hold(3):
            pass
        try:
            shared.acquire_nowait(0)
        except ValueError:
            pass
        if i % 50 == 0:
            shared.pause(0.0001)
            async with shared.hold(2):
                pass

    from taskbound._adaptive import AIMD, adaptive_type
    adaptive_limiter = adaptive_type(module.Limiter)(
        2, max_tokens=6, algorithm=AIMD(), overload=Boom)

    async def held_by_hand(mark):
        async with adaptive_limiter:
            if mark:
                adaptive_limiter.mark_overload()
            await asyncio.sleep(0)

    async def adaptive(i):
        # Samples from children (one a drop), an async with (marked or
        # not), a cancelled hold and stream items; windows end now and
        # then, moving the total.
        try:
            async with Group(limiter=adaptive_limiter) as tg:
                await tg.spawn(ok(i))
                if i % 3 == 0:
                    await tg.spawn(fail(i))
        except* Boom:
            pass
        await held_by_hand(i % 2 == 0)
        cancelled = asyncio.create_task(held_by_hand(False))
        await asyncio.sleep(0)
        cancelled.cancel()
        await asyncio.gather(cancelled, return_exceptions=True)
        async for _ in helpers.amap(fail if i % 4 == 0 else ok, range(3),
                                    limiter=adaptive_limiter,
                                    return_exceptions=True):
            pass

    return {f.__name__: f for f in (spawn_success, spawn_error, spawn_cancel,
                                    create_task_abort, stream_break,
                                    per_item, weighted, adaptive)}


def census():
    gc.collect()
    gc.collect()
    counts = collections.Counter(type(o).__qualname__
                                 for o in gc.get_objects())
    return counts, tracemalloc.get_traced_memory()[0]


def main() -> int:
    impl, loop_kind, name, cycles = sys.argv[1:5]
    cycles = int(cycles)
    module = importlib.import_module(MODULES[impl])
    from taskbound._helpers import Helpers
    helpers = Helpers.of(module)
    shared = module.Limiter(3)
    scenario = scenarios(module, helpers, shared)[name]
    if loop_kind == "uvloop":
        import uvloop
        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    handler_calls = []
    loop.set_exception_handler(lambda loop, context:
                               handler_calls.append(context.get("message")))
    watched = {"scenario": scenario, "ok": ok, "fail": fail,
               "sleeper": sleeper, "shared": shared, "loop": loop,
               "Boom": Boom, "Limiter": module.Limiter,
               "BoundedTaskGroup": module.BoundedTaskGroup}

    async def run(count):
        for i in range(count):
            await scenario(i)

    tracemalloc.start()
    loop.run_until_complete(run(WARM_UP))
    before_counts, before_memory = census()
    before_refs = {k: sys.getrefcount(v) for k, v in watched.items()}
    loop.run_until_complete(run(cycles))
    after_counts, after_memory = census()
    after_refs = {k: sys.getrefcount(v) for k, v in watched.items()}
    tracemalloc.stop()
    loop.close()
    grown = {k: after_counts[k] - before_counts[k]
             for k in after_counts if after_counts[k] > before_counts[k]}
    json.dump({
        "cycles": cycles,
        "objects_before": sum(before_counts.values()),
        "objects_after": sum(after_counts.values()),
        "grown_types": grown,
        "refcounts_before": before_refs,
        "refcounts_after": after_refs,
        "traced_before": before_memory,
        "traced_after": after_memory,
        "borrowed_after": shared.borrowed_tokens,
        "handler_calls": handler_calls[:5],
    }, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
