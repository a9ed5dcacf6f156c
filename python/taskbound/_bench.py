"""``python -m taskbound bench``: taskbound beside the event loop's own cost,
the stdlib patterns and the peers, on the same work in one process.

Each workload runs every contender on the same items, interleaved, over
several rounds, and reports the median throughput, the ratio to the floor
that applies (the *task floor* for contenders that make a Task per item,
the *worker floor* for those that map items through workers) and to the
reference baseline (asyncio.TaskGroup + Semaphore acquired before
create_task), the peak of live tasks and, in a separate untimed pass, the
peak traced memory. Peers come from the ``bench`` extra; a peer that is not
installed is reported as skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import statistics
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ._common import install_hint

Item = Callable[[int], Awaitable[object]]
Run = Callable[[int, int, Item], Awaitable[None]]

BASELINE = "TaskGroup + Semaphore before create_task"


@dataclass
class Contender:
    name: str
    kind: str                  # "task" or "worker": which floor applies
    run: Run
    streaming: bool = False    # part of the 1,000,000-item streaming run


@dataclass
class Result:
    name: str
    kind: str
    seconds: list = field(default_factory=list)
    peak_tasks: int = 0
    peak_memory: int | None = None

    def rate(self, items: int) -> float:
        return items / statistics.median(self.seconds)


# -- what an item does --

class Probe:
    """Samples the live tasks every so often (all_tasks() is not free)."""

    every = 97

    def __init__(self) -> None:
        self.calls = 0
        self.peak = 0

    def __call__(self) -> None:
        if self.every:
            self.calls += 1
            if self.calls % self.every == 1:
                self.peak = max(self.peak, len(asyncio.all_tasks()))


def make_item(delay: float, probe: Probe) -> Item:
    async def item(i: int) -> int:
        probe()
        await asyncio.sleep(delay)
        return i
    return item


# -- the floors and the stdlib patterns --

async def task_floor(n: int, limit: int, item: Item) -> None:
    """Tasks created in batches of `limit`, no limiter, no bookkeeping."""
    loop = asyncio.get_running_loop()
    for start in range(0, n, limit):
        batch = [loop.create_task(item(i))
                 for i in range(start, min(n, start + limit))]
        for task in batch:
            await task


async def worker_floor(n: int, limit: int, item: Item) -> None:
    """`limit` workers pulling from one iterator, awaiting items inline."""
    items = iter(range(n))

    async def worker() -> None:
        for i in items:
            await item(i)

    await asyncio.gather(*(worker() for _ in range(limit)))


async def taskgroup_semaphore_inside(n: int, limit: int, item: Item) -> None:
    semaphore = asyncio.Semaphore(limit)

    async def guarded(i: int) -> None:
        async with semaphore:
            await item(i)

    async with asyncio.TaskGroup() as tg:
        for i in range(n):
            tg.create_task(guarded(i))


async def taskgroup_semaphore_before(n: int, limit: int, item: Item) -> None:
    semaphore = asyncio.Semaphore(limit)

    async def release_after(i: int) -> None:
        try:
            await item(i)
        finally:
            semaphore.release()

    async with asyncio.TaskGroup() as tg:
        for i in range(n):
            await semaphore.acquire()
            tg.create_task(release_after(i))


async def gather_semaphore(n: int, limit: int, item: Item) -> None:
    semaphore = asyncio.Semaphore(limit)

    async def guarded(i: int) -> object:
        async with semaphore:
            return await item(i)

    await asyncio.gather(*(guarded(i) for i in range(n)))


async def queue_pool(n: int, limit: int, item: Item) -> None:
    queue: asyncio.Queue = asyncio.Queue(maxsize=limit)

    async def worker() -> None:
        while True:
            i = await queue.get()
            try:
                await item(i)
            finally:
                queue.task_done()

    workers = [asyncio.create_task(worker()) for _ in range(limit)]
    for i in range(n):
        await queue.put(i)
    await queue.join()
    for task in workers:
        task.cancel()
    await asyncio.gather(*workers, return_exceptions=True)


# -- the peers (from the bench extra) --

def peers() -> tuple[list[Contender], list[str]]:
    found: list[Contender] = []
    missing: list[str] = []
    try:
        import quattro

        async def quattro_group(n: int, limit: int, item: Item) -> None:
            async with quattro.TaskGroup(concurrency_limit=limit) as tg:
                for i in range(n):
                    tg.create_task(item(i))
        found.append(Contender("quattro.TaskGroup(concurrency_limit)", "task",
                               quattro_group))
    except ImportError:
        missing.append("quattro")
    try:
        import anyio

        async def anyio_group(n: int, limit: int, item: Item) -> None:
            limiter = anyio.CapacityLimiter(limit)

            async def guarded(i: int) -> None:
                async with limiter:
                    await item(i)

            async with anyio.create_task_group() as tg:
                for i in range(n):
                    tg.start_soon(guarded, i)
        found.append(Contender("anyio task group + CapacityLimiter", "task",
                               anyio_group))
    except ImportError:
        missing.append("anyio")
    try:
        import asyncio_pool

        async def aio_pool(n: int, limit: int, item: Item) -> None:
            async with asyncio_pool.AioPool(size=limit) as pool:
                for i in range(n):
                    await pool.spawn(item(i))
        found.append(Contender("asyncio_pool.AioPool.spawn", "task",
                               aio_pool))
    except ImportError:
        missing.append("asyncio-pool")
    try:
        import aiometer

        async def aiometer_amap(n: int, limit: int, item: Item) -> None:
            async with aiometer.amap(item, range(n),
                                     max_at_once=limit) as results:
                async for _ in results:
                    pass

        async def aiometer_each(n: int, limit: int, item: Item) -> None:
            await aiometer.run_on_each(item, range(n), max_at_once=limit)
        found.append(Contender("aiometer.amap", "worker", aiometer_amap))
        found.append(Contender("aiometer.run_on_each", "worker",
                               aiometer_each))
    except ImportError:
        missing.append("aiometer")
    try:
        from aiostream import stream

        async def aiostream_map(n: int, limit: int, item: Item) -> None:
            mapped = stream.map(stream.iterate(range(n)), item,
                                task_limit=limit)
            async with mapped.stream() as results:
                async for _ in results:
                    pass
        found.append(Contender("aiostream.stream.map(task_limit)", "worker",
                               aiostream_map))
    except ImportError:
        missing.append("aiostream")
    return found, missing


# -- ours --

def ours(module, label: str) -> list[Contender]:
    from ._helpers import Helpers
    helpers = Helpers.of(module)

    async def spawn(n: int, limit: int, item: Item) -> None:
        async with module.BoundedTaskGroup(limit) as tg:
            for i in range(n):
                await tg.spawn(item(i))

    async def create_task(n: int, limit: int, item: Item) -> None:
        async with module.BoundedTaskGroup(limit) as tg:
            for i in range(n):
                tg.create_task(item(i))

    async def amap(n: int, limit: int, item: Item) -> None:
        async for _ in helpers.amap(item, range(n), limit=limit):
            pass

    async def amap_unordered(n: int, limit: int, item: Item) -> None:
        async for _ in helpers.amap(item, range(n), limit=limit,
                                    ordered=False):
            pass

    async def as_completed(n: int, limit: int, item: Item) -> None:
        async for _ in helpers.as_completed((item(i) for i in range(n)),
                                            limit=limit):
            pass

    async def gather(n: int, limit: int, item: Item) -> None:
        await helpers.gather(*(item(i) for i in range(n)), limit=limit)

    return [
        Contender(f"BoundedTaskGroup.spawn [{label}]", "task", spawn),
        Contender(f"BoundedTaskGroup.create_task [{label}]", "task",
                  create_task),
        Contender(f"amap [{label}]", "worker", amap, streaming=True),
        Contender(f"amap(ordered=False) [{label}]", "worker", amap_unordered,
                  streaming=True),
        Contender(f"as_completed [{label}]", "worker", as_completed,
                  streaming=True),
        Contender(f"gather [{label}]", "worker", gather),
    ]


def contenders() -> tuple[list[Contender], list[str]]:
    from . import _pycore
    found = [
        Contender("task floor", "task", task_floor),
        Contender("worker floor", "worker", worker_floor, streaming=True),
        Contender(BASELINE, "task", taskgroup_semaphore_before),
        Contender("TaskGroup + Semaphore inside the task", "task",
                  taskgroup_semaphore_inside),
        Contender("gather + Semaphore", "task", gather_semaphore),
        Contender("asyncio.Queue worker pool", "worker", queue_pool,
                  streaming=True),
    ]
    peer_list, missing = peers()
    found += peer_list
    try:
        from . import _taskbound
        found += ours(_taskbound, "C")
    except ImportError:
        missing.append("taskbound's C core (not built)")
    found += ours(_pycore, "Python")
    return found, missing


# -- running --

def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        import uvloop
        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run_once(contender: Contender, loop_kind: str, items: int, limit: int,
             delay: float, trace_memory: bool = False
             ) -> tuple[float, int, int | None]:
    """One run; the untimed memory pass also samples the live tasks (a
    cost that would skew the timed runs)."""
    probe = Probe()
    if not trace_memory:
        probe.every = 0
    item = make_item(delay, probe)
    loop = new_loop(loop_kind)
    gc.collect()
    try:
        if trace_memory:
            tracemalloc.start()
            tracemalloc.reset_peak()
        start = time.perf_counter()
        loop.run_until_complete(contender.run(items, limit, item))
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1] if trace_memory else None
    finally:
        if trace_memory:
            tracemalloc.stop()
        loop.close()
    return elapsed, probe.peak, peak


def progress(text: str) -> None:
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K" + text)
    else:
        sys.stderr.write(text + "\n")
    sys.stderr.flush()


def measure(chosen: list[Contender], loop_kind: str, items: int, limit: int,
            delay: float, rounds: int, memory: bool, title: str) -> dict:
    results = {c.name: Result(c.name, c.kind) for c in chosen}
    steps = rounds * len(chosen) + (len(chosen) if memory else 0)
    step = 0
    for round_no in range(rounds):
        for contender in chosen:
            step += 1
            progress(f"[{step}/{steps}] {title}, round {round_no + 1}: "
                     f"{contender.name}")
            seconds, _, _ = run_once(contender, loop_kind, items, limit,
                                     delay)
            results[contender.name].seconds.append(seconds)
    if memory:
        for contender in chosen:
            step += 1
            progress(f"[{step}/{steps}] {title}, memory: {contender.name}")
            _, tasks, peak = run_once(contender, loop_kind, items, limit,
                                      delay, trace_memory=True)
            results[contender.name].peak_memory = peak
            results[contender.name].peak_tasks = tasks
    if sys.stderr.isatty():
        progress("")
    return results


def table(title: str, results: dict, items: int) -> list[dict]:
    rates = {name: r.rate(items) for name, r in results.items()}
    floors = {"task": rates.get("task floor"),
              "worker": rates.get("worker floor")}
    baseline = rates.get(BASELINE)
    rows = []
    for name, result in results.items():
        rate = rates[name]
        floor = floors[result.kind]
        rows.append({
            "contender": name,
            "kind": result.kind,
            "items_per_second": rate,
            "ratio_to_floor": rate / floor if floor else None,
            "ratio_to_baseline": rate / baseline if baseline else None,
            "peak_live_tasks": result.peak_tasks,
            "peak_traced_bytes": result.peak_memory,
            "seconds": result.seconds,
        })
    width = max(len(row["contender"]) for row in rows)

    def fmt(value, width, spec):
        return f"{'-':>{width}}" if value is None \
            else f"{value:>{width}{spec}}"

    print(f"\n{title}")
    print(f"{'contender':<{width}}  {'items/s':>10}  {'x floor':>8}  "
          f"{'x baseline':>10}  {'tasks':>7}  {'peak KiB':>9}")
    for row in rows:
        memory = row["peak_traced_bytes"]
        print(f"{row['contender']:<{width}}  "
              f"{row['items_per_second']:>10,.0f}  "
              f"{fmt(row['ratio_to_floor'], 8, '.2f')}  "
              f"{fmt(row['ratio_to_baseline'], 10, '.2f')}  "
              f"{fmt(row['peak_live_tasks'] or None, 7, 'd')}  "
              f"{fmt(memory / 1024 if memory is not None else None, 9, '.0f')}")
    return rows


def plot(path: str, args, chosen: list[Contender]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    counts = [max(args.limit, args.items // 100), args.items // 10,
              args.items]
    names = [c.name for c in chosen]
    rates: dict = {name: [] for name in names}
    peaks: dict = {name: [] for name in names}
    for count in counts:
        results = measure(chosen, args.loop, count, args.limit, 0.0,
                          max(1, args.rounds // 2), True,
                          f"plot, {count} items")
        for name in names:
            rates[name].append(results[name].rate(count))
            peaks[name].append(results[name].peak_memory / 2**20)
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 9))
    for name in names:
        top.plot(counts, rates[name], marker="o", label=name)
        bottom.plot(counts, peaks[name], marker="o", label=name)
    for axis, label in ((top, "items per second"),
                        (bottom, "peak traced memory (MiB)")):
        axis.set_xscale("log")
        axis.set_xlabel("items")
        axis.set_ylabel(label)
        axis.grid(True, alpha=0.3)
    top.set_title(f"await asyncio.sleep(0) items, limit {args.limit}, "
                  f"{args.loop}")
    top.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    print(f"\nplot written to {path}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The bench's options, on the parser of ``python -m taskbound bench``."""
    parser.add_argument("--items", type=int, default=10_000,
                        help="items of the trivial workload")
    parser.add_argument("--wait-items", type=int, default=2_000,
                        help="items of the short-wait workload")
    parser.add_argument("--wait-ms", type=float, default=2.0,
                        help="each short-wait item sleeps this long")
    parser.add_argument("--stream-items", type=int, default=1_000_000,
                        help="items of the streaming run (0 to skip it)")
    parser.add_argument("section", nargs="?", choices=["all", "adaptive"],
                        default="all",
                        help="'adaptive': only the AdaptiveLimiter "
                             "simulation (default: everything)")
    parser.add_argument("--adaptive-seconds", type=float, default=40.0,
                        help="virtual seconds per run of the adaptive "
                             "simulation (0 skips it)")
    parser.add_argument("--adaptive-http-seconds", type=float, default=3.0,
                        help="real seconds per contender of the adaptive "
                        "rows against a local aiohttp server (0: none)")
    parser.add_argument("--adaptive-plot", metavar="FILE",
                        help="write the adaptive limits over time as a PNG "
                             "(needs matplotlib)")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"],
                        default="asyncio")
    parser.add_argument("--only", default="",
                        help="run only contenders whose name has this text")
    parser.add_argument("--no-memory", action="store_true",
                        help="skip the untimed tracemalloc pass")
    parser.add_argument("--stream-memory", action="store_true",
                        help="also trace memory in the streaming run "
                             "(slow: tracemalloc over every item)")
    parser.add_argument("--limiter-entries", type=int, default=100_000,
                        help="async with entries per case of the limiter "
                             "rows (0 to skip them)")
    parser.add_argument("--rate-seconds", type=float, default=5.0,
                        help="how long the rate limiters run with the rate "
                             "binding")
    parser.add_argument("--redis-pairs", type=int, default=2_000,
                        help="acquire/release pairs per round of the Redis "
                             "row (0 to skip it)")
    parser.add_argument("--redis", metavar="URL",
                        help="the Redis server of the Redis row (default: "
                             "a redis-server started for the run, if one "
                             "is on PATH)")
    parser.add_argument("--http-requests", type=int, default=20_000,
                        help="requests of the HTTP fan-out row (0 to skip "
                             "it; needs aiohttp)")
    parser.add_argument("--http-sleep-ms", type=float, default=1.0,
                        help="the HTTP server's handler sleeps this long")
    parser.add_argument("--crawl-urls", type=int, default=5_000,
                        help="URLs of the crawl rows, 0 to skip them")
    parser.add_argument("--llm-requests", type=int, default=300,
                        help="requests of the LLM-client row, 0 to skip it")
    parser.add_argument("--downloads", type=int, default=300,
                        help="downloads of the disk row, 0 to skip it")
    parser.add_argument("--api-calls", type=int, default=1_000,
                        help="calls of the push-back rows, 0 to skip them")
    parser.add_argument("--json", metavar="FILE",
                        help="write the raw figures to FILE")
    parser.add_argument("--plot", metavar="FILE",
                        help="write a PNG of throughput and peak memory "
                             "against the item count (needs matplotlib)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m taskbound bench")
    add_arguments(parser)
    return run(parser.parse_args(argv))


def limits(args: argparse.Namespace, report: dict) -> None:
    """The rows of limits shaped like real ones (_benchlimits), on the
    active implementation."""
    import taskbound
    from . import _benchlimits as bl
    if args.crawl_urls > 0:
        figures = bl.measure_crawl(taskbound, args.crawl_urls, args.rounds,
                                   new_loop, args.loop, progress)
        bl.crawl_table(args.crawl_urls, figures)
        report["workloads"]["crawl"] = {
            "urls": args.crawl_urls, "rows": [
                {"contender": name, "others_per_second_alone": alone,
                 "others_per_second_with_slow_host": slowed}
                for name, (alone, slowed) in figures.items()]}
    if args.llm_requests > 0:
        figures = bl.measure_llm(taskbound, args.llm_requests, new_loop,
                                 args.loop)
        bl.llm_table(figures)
        report["workloads"]["llm"] = figures
    if args.downloads > 0:
        figures = bl.measure_disk(taskbound, args.downloads, new_loop,
                                  args.loop)
        bl.disk_table(figures)
        report["workloads"]["disk"] = figures
    if args.api_calls > 0:
        figures = bl.measure_push_back(taskbound, args.api_calls, new_loop,
                                       args.loop)
        bl.push_back_table(args.api_calls, figures)
        report["workloads"]["push-back"] = {
            "calls": args.api_calls, "rows": [
                {"contender": name, "refusals_per_call": refused,
                 "seconds": seconds}
                for name, (refused, seconds) in figures.items()]}


def write_json(args: argparse.Namespace, report: dict) -> None:
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"\nraw figures written to {args.json}")


def adaptive(args: argparse.Namespace, report: dict) -> None:
    """The AdaptiveLimiter rows (_benchadaptive), on the active
    implementation, on a virtual clock."""
    import taskbound
    from . import _benchadaptive as ba
    if args.adaptive_seconds <= 0:
        return
    ba.DURATION = args.adaptive_seconds
    ba.CHANGE_AT = args.adaptive_seconds / 2
    for name in ba.peer_contenders()[1]:
        print(f"skipped: {name} is not installed ({install_hint('bench')})")
    figures = ba.measure(taskbound, progress)
    ba.table(figures)
    cost = ba.measure_sample_cost(taskbound, args.rounds, new_loop, args.loop)
    ba.cost_table(cost)
    report["workloads"]["adaptive"] = {
        "seconds": args.adaptive_seconds,
        "seconds_per_item": cost, "scenarios": {
            scenario: {name: {"goodput": run.goodput, "p50": run.p50,
                              "p99": run.p99, "errors": run.errors,
                              "requests": run.requests,
                              "reconverge_round_trips": run.reconverge}
                       for name, run in runs.items()}
            for scenario, runs in figures.items()},
        "targets": {name: [{"what": what, "goal": goal, "figure": figure,
                            "passed": passed}
                           for what, goal, figure, passed
                           in ba.targets(figures, name)]
                    for name in ba.adaptive_contenders(taskbound)}}
    if args.adaptive_http_seconds > 0:
        from . import _benchadaptivehttp as bah
        runs = bah.measure(taskbound, args.adaptive_http_seconds, new_loop,
                           args.loop, progress)
        if isinstance(runs, str):
            print(f"\nskipped: the adaptive HTTP rows ({runs})")
        else:
            bah.table(runs, args.adaptive_http_seconds)
            report["workloads"]["adaptive"]["http"] = {
                name: {"goodput": run.goodput, "p50": run.p50,
                       "p99": run.p99, "errors": run.errors,
                       "requests": run.requests,
                       "limit_at_end": run.trace[-1][1] if run.trace
                       else None}
                for name, run in runs.items()}
    if args.adaptive_plot:
        ba.plot(args.adaptive_plot, figures)
        print(f"\nthe adaptive limits over time drawn in {args.adaptive_plot}")


def run(args: argparse.Namespace) -> int:

    from . import implementation
    print(f"taskbound bench: CPython {platform.python_version()}, loop "
          f"{args.loop}, {os.cpu_count()} cores, limit {args.limit}, "
          f"{args.rounds} rounds, taskbound.implementation={implementation}")
    report: dict = {"python": platform.python_version(), "loop": args.loop,
                    "cores": os.cpu_count(), "limit": args.limit,
                    "rounds": args.rounds, "workloads": {}}
    if args.section == "adaptive":
        # Its own peers only: the fan-out contenders take no part in it.
        adaptive(args, report)
        write_json(args, report)
        return 0
    found, missing = contenders()
    floors_and_baseline = {"task floor", "worker floor", BASELINE}
    chosen = [c for c in found
              if args.only in c.name or c.name in floors_and_baseline]
    for name in missing:
        print(f"skipped: {name} is not installed "
              f"({install_hint('bench')})")
    workloads = [("trivial", args.items, 0.0,
                  f"{args.items:,} items of `await asyncio.sleep(0)`"),
                 ("short wait", args.wait_items, args.wait_ms / 1000,
                  f"{args.wait_items:,} items of "
                  f"`await asyncio.sleep({args.wait_ms / 1000:g})`")]
    for key, count, delay, title in workloads:
        if count <= 0:
            continue
        results = measure(chosen, args.loop, count, args.limit, delay,
                          args.rounds, not args.no_memory, title)
        report["workloads"][key] = {"items": count, "delay": delay,
                                    "rows": table(title, results, count)}
    if args.stream_items > 0:
        streaming = [c for c in chosen if c.streaming
                     and "[Python]" not in c.name and "Queue" not in c.name]
        title = (f"streaming {args.stream_items:,} items of "
                 "`await asyncio.sleep(0)`, one round")
        results = measure(streaming, args.loop, args.stream_items,
                          args.limit, 0.0, 1, args.stream_memory, title)
        report["workloads"]["streaming"] = {
            "items": args.stream_items, "delay": 0.0,
            "rows": table(title, results, args.stream_items)}
    if args.limiter_entries > 0:
        from . import _benchlimiter, _pycore, _taskbound
        modules = {"C": _taskbound, "Python": _pycore}
        figures = _benchlimiter.measure(modules, args.limiter_entries,
                                        args.rounds, new_loop, args.loop,
                                        progress)
        _benchlimiter.table(args.limiter_entries, figures)
        rates = _benchlimiter.measure_rates(
            modules, args.limiter_entries, args.rate_seconds, args.rounds,
            new_loop, args.loop, progress)
        _benchlimiter.rate_table(args.limiter_entries, args.rate_seconds,
                                 rates)
        report["workloads"]["limiter"] = {"entries": args.limiter_entries,
                                          "rows": figures}
        report["workloads"]["rate limiter"] = {
            "entries": args.limiter_entries, "seconds": args.rate_seconds,
            "rows": rates}
    if args.redis_pairs > 0:
        from . import _benchredis
        title = (f"Redis over loopback: {args.redis_pairs:,} acquire/release "
                 "pairs, one after another")
        rows = _benchredis.measure(args.redis, args.redis_pairs, args.rounds,
                                   new_loop, args.loop, progress)
        if isinstance(rows, str):
            print(f"\nskipped: the Redis row ({rows})")
        else:
            _benchredis.table(title, rows)
            report["workloads"]["redis"] = {"pairs": args.redis_pairs,
                                            "rows": rows}
    if args.http_requests > 0:
        from . import _benchhttp
        title = (f"HTTP fan-out over loopback (aiohttp): "
                 f"{args.http_requests:,} requests, limit {args.limit}, the "
                 f"handler sleeps {args.http_sleep_ms:g} ms; each run in a "
                 "process of its own")
        rows = _benchhttp.measure(args.http_requests, args.limit,
                                  args.http_sleep_ms / 1000, args.rounds,
                                  args.loop, {c.name for c in chosen},
                                  progress)
        if isinstance(rows, str):
            print(f"\nskipped: the HTTP row ({rows})")
        else:
            _benchhttp.table(title, rows)
            report["workloads"]["http"] = {
                "requests": args.http_requests,
                "sleep": args.http_sleep_ms / 1000, "rows": rows}
    limits(args, report)
    adaptive(args, report)
    write_json(args, report)
    if args.plot:
        keep = {"task floor", "worker floor", BASELINE,
                "BoundedTaskGroup.spawn [C]", "amap [C]", "as_completed [C]"}
        plot(args.plot, args, [c for c in chosen if c.name in keep])
    return 0
