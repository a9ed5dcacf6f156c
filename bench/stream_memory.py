"""Peak live tasks and peak traced memory of the streaming helpers.

Usage: python bench/stream_memory.py [--items N ...] [--limit N]

Streams N items (``await asyncio.sleep(0)``) from a generator through each
helper at the given limit, and prints the most tasks alive at once and
tracemalloc's peak (the helper's own memory: gather's result list, which
grows with N by nature, is left out by consuming a generator of awaitables
with amap and as_completed, and by counting gather separately).
"""

from __future__ import annotations

import argparse
import asyncio
import tracemalloc

import taskbound


async def measure(helper: str, items: int, limit: int) -> tuple[int, int]:
    peak_tasks = 0

    async def item(i: int) -> int:
        nonlocal peak_tasks
        peak_tasks = max(peak_tasks, len(asyncio.all_tasks()))
        await asyncio.sleep(0)
        return i

    tracemalloc.start()
    tracemalloc.reset_peak()
    if helper == "amap":
        async for _ in taskbound.amap(item, range(items), limit=limit):
            pass
    elif helper == "amap-unordered":
        async for _ in taskbound.amap(item, range(items), limit=limit,
                                      ordered=False):
            pass
    else:
        async for future in taskbound.as_completed(
                (item(i) for i in range(items)), limit=limit):
            future.result()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak_tasks, peak


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, nargs="+",
                        default=[100_000, 1_000_000])
    parser.add_argument("--limit", type=int, default=100)
    args = parser.parse_args()
    print(f"implementation {taskbound.implementation}, limit {args.limit}")
    print(f"{'helper':<16} {'items':>10} {'peak tasks':>11} {'peak KiB':>10}")
    for helper in ("amap", "amap-unordered", "as_completed"):
        for items in args.items:
            tasks, peak = asyncio.run(measure(helper, items, args.limit))
            print(f"{helper:<16} {items:>10,} {tasks:>11} {peak / 1024:>10.1f}")


if __name__ == "__main__":
    main()
