"""Young-generation collections per 10,000 items, per contender of the
bench (limit 100, items of `await asyncio.sleep(0)`), counted with
gc.callbacks after a warm-up run:

    python bench/gc_collections.py ["task floor" "BoundedTaskGroup.spawn [C]" ...]

With no names, the floor, spawn, create_task and the stdlib's TaskGroup +
Semaphore forms. Collections are what made spawn slower than the floor on
CPython 3.12 (see bench/README.md, "Where the targets stand").
"""

from __future__ import annotations

import asyncio
import gc
import sys

from taskbound import _bench

ITEMS = 10_000
DEFAULT = ["task floor", "BoundedTaskGroup.spawn [C]",
           "BoundedTaskGroup.create_task [C]",
           "TaskGroup + Semaphore before create_task",
           "TaskGroup + Semaphore inside the task"]


def collections_of(contender, loop) -> list[int]:
    item = _bench.make_item(0.0, _bench.Probe())
    loop.run_until_complete(contender.run(1_000, 100, item))
    counts = [0, 0, 0]

    def count(phase, info):
        if phase == "start":
            counts[info["generation"]] += 1

    gc.collect()
    gc.callbacks.append(count)
    try:
        loop.run_until_complete(contender.run(ITEMS, 100, item))
    finally:
        gc.callbacks.remove(count)
    return counts


def main() -> int:
    _bench.Probe.every = 0
    found, _ = _bench.contenders()
    by_name = {c.name: c for c in found}
    names = sys.argv[1:] or DEFAULT
    unknown = [n for n in names if n not in by_name]
    if unknown:
        print(f"unknown contenders: {unknown}", file=sys.stderr)
        return 2
    loop = asyncio.new_event_loop()
    try:
        print(f"collections per {ITEMS:,} items (young, middle, old):")
        for name in names:
            young, middle, old = collections_of(by_name[name], loop)
            print(f"  {name:<45} {young:>4} {middle:>4} {old:>4}")
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
