"""``python -m taskbound bench``: a first, small comparison.

Runs trivial items (``await asyncio.sleep(0)``) through each contender, in
one process, interleaved over several rounds, and prints items per second
(median of the rounds) and the ratio to the task floor and to the reference
baseline measured in the same run. The full suite (peers, streaming,
memory) comes with the benchmark issue.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from collections.abc import Awaitable, Callable

Contender = Callable[[int, int], Awaitable[None]]


async def item() -> None:
    await asyncio.sleep(0)


async def task_floor(items: int, limit: int) -> None:
    """Tasks created in batches of `limit`, no limiter, no bookkeeping."""
    loop = asyncio.get_running_loop()
    done = 0
    while done < items:
        batch = [loop.create_task(item()) for _ in range(min(limit, items - done))]
        for task in batch:
            await task
        done += len(batch)


async def reference_baseline(items: int, limit: int) -> None:
    """asyncio.TaskGroup + Semaphore acquired before create_task."""
    semaphore = asyncio.Semaphore(limit)

    async def run() -> None:
        try:
            await item()
        finally:
            semaphore.release()

    async with asyncio.TaskGroup() as tg:
        for _ in range(items):
            await semaphore.acquire()
            tg.create_task(run())


def group_spawn(module) -> Contender:
    async def contender(items: int, limit: int) -> None:
        async with module.BoundedTaskGroup(limit) as tg:
            for _ in range(items):
                await tg.spawn(item())
    return contender


def group_create_task(module) -> Contender:
    async def contender(items: int, limit: int) -> None:
        async with module.BoundedTaskGroup(limit) as tg:
            for _ in range(items):
                tg.create_task(item())
    return contender


def contenders() -> dict[str, Contender]:
    from . import _pycore
    found: dict[str, Contender] = {
        "task floor": task_floor,
        "TaskGroup+Semaphore (baseline)": reference_baseline,
    }
    try:
        from . import _taskbound
    except ImportError:  # pragma: no cover - the C core did not build
        _taskbound = None
    if _taskbound is not None:
        found["BoundedTaskGroup.spawn [C]"] = group_spawn(_taskbound)
        found["BoundedTaskGroup.create_task [C]"] = group_create_task(_taskbound)
    found["BoundedTaskGroup.spawn [Python]"] = group_spawn(_pycore)
    found["BoundedTaskGroup.create_task [Python]"] = group_create_task(_pycore)
    return found


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        import uvloop
        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def measure(args: argparse.Namespace) -> dict[str, float]:
    found = contenders()
    seconds: dict[str, list[float]] = {name: [] for name in found}
    for round_no in range(args.rounds):
        for name, contender in found.items():
            loop = new_loop(args.loop)
            gc.collect()
            try:
                start = time.perf_counter()
                loop.run_until_complete(contender(args.items, args.limit))
                seconds[name].append(time.perf_counter() - start)
            finally:
                loop.close()
        print(f"  round {round_no + 1}/{args.rounds} done", flush=True)
    return {name: args.items / statistics.median(times)
            for name, times in seconds.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m taskbound bench")
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"],
                        default="asyncio")
    args = parser.parse_args(argv)
    print(f"{args.items} items of `await asyncio.sleep(0)`, limit "
          f"{args.limit}, {args.rounds} rounds, loop {args.loop}")
    rates = measure(args)
    floor = rates["task floor"]
    baseline = rates["TaskGroup+Semaphore (baseline)"]
    width = max(len(name) for name in rates)
    print(f"{'contender':<{width}}  {'items/s':>10}  {'x floor':>8}  "
          f"{'x baseline':>10}")
    for name, rate in rates.items():
        print(f"{name:<{width}}  {rate:>10,.0f}  {rate / floor:>8.2f}  "
              f"{rate / baseline:>10.2f}")
    return 0
