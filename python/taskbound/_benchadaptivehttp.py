"""The bench's adaptive rows in real time: an aiohttp client against a local
aiohttp server (a process of its own) whose handler admits CAPACITY
requests at once, queues up to QUEUE_ROUNDS x CAPACITY more, answers 503
beyond that, and is slowed by its queue as _benchadaptive's simulated
server is (CONTENTION). The same contenders as the simulation's steady
scenario, each for a few seconds of real time, on loopback: a check that
what the virtual clock shows holds on a real loop, a real HTTP stack and
a real clock.

    python -m taskbound._benchadaptivehttp serve
        prints the port, serves until its stdin closes
"""

from __future__ import annotations

import asyncio
import sys

from ._benchadaptive import CONTENTION, QUEUE_ROUNDS, Run, percentile
from ._benchhttp import Server, missing, run_fast, serve_until_stdin_closes

CAPACITY = 20           # requests the handler serves at once
SERVICE = 0.02          # seconds each takes, unloaded
TIMEOUT = 10 * SERVICE  # the client's, per request
INITIAL = 5             # where an adaptive limiter starts


# -- the server process --

async def _serve() -> None:
    from aiohttp import web

    admitted = asyncio.Semaphore(CAPACITY)
    waiting = 0

    async def handle(request):
        nonlocal waiting
        if waiting >= QUEUE_ROUNDS * CAPACITY:
            return web.Response(status=503, text="busy")
        waiting += 1
        try:
            await admitted.acquire()
        finally:
            waiting -= 1
        try:
            await asyncio.sleep(
                SERVICE * (1.0 + CONTENTION * waiting / CAPACITY))
        finally:
            admitted.release()
        return web.Response(text="ok")

    await serve_until_stdin_closes(handle)


# -- the client --

async def _run(module, url: str, limiter, adaptive: bool,
               seconds: float) -> Run:
    import aiohttp
    loop = asyncio.get_running_loop()
    latencies: list = []
    errors = requests = 0
    trace: list = []

    # No pool limit of aiohttp's own: the contender's bound is the bound.
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def one() -> None:
            nonlocal errors, requests
            requests += 1
            started = loop.time()
            try:
                async with asyncio.timeout(TIMEOUT):
                    async with session.get(url) as response:
                        await response.read()
                        status = response.status
            except (TimeoutError, aiohttp.ClientError):
                status = None
            if status == 200:
                latencies.append(loop.time() - started)
                return
            errors += 1
            if adaptive:
                limiter.mark_overload()

        def sample() -> None:
            trace.append((loop.time() - start, limiter.total_tokens))
            if loop.time() - start < seconds:
                loop.call_later(0.25, sample)

        start = loop.time()
        sample()
        async with module.BoundedTaskGroup(limiter=limiter) as tg:
            while loop.time() - start < seconds:
                await tg.spawn(one())
        elapsed = loop.time() - start
    return Run(len(latencies) / elapsed, percentile(latencies, 0.5),
               percentile(latencies, 0.99), errors / max(1, requests),
               requests, None, trace if adaptive else [])


def contenders(module) -> dict:
    """{name: (make a limiter, adaptive?)}."""
    from ._adaptive import AIMD, Gradient2, Probe
    rows = {f"fixed {n}": (lambda n=n: module.Limiter(n), False)
            for n in (CAPACITY // 4, CAPACITY // 2, CAPACITY, 2 * CAPACITY,
                      4 * CAPACITY)}
    rows["AdaptiveLimiter, Probe()"] = (
        lambda: module.AdaptiveLimiter(INITIAL, algorithm=Probe()), True)
    rows["AdaptiveLimiter, Gradient2()"] = (
        lambda: module.AdaptiveLimiter(INITIAL, algorithm=Gradient2()), True)
    rows[f"AdaptiveLimiter, AIMD(timeout={1.5 * SERVICE:g})"] = (
        lambda: module.AdaptiveLimiter(
            INITIAL, algorithm=AIMD(timeout=1.5 * SERVICE)), True)
    return rows


def measure(module, seconds: float, new_loop, loop_kind: str,
            progress) -> dict | str:
    """{contender: Run}, or why there are none."""
    why = missing()
    if why:
        return why
    server = Server(module="taskbound._benchadaptivehttp")
    runs: dict = {}
    try:
        for name, (make, adaptive) in contenders(module).items():
            progress(f"adaptive over HTTP: {name}")
            loop = new_loop(loop_kind)
            try:
                runs[name] = loop.run_until_complete(
                    _run(module, server.url, make(), adaptive, seconds))
            finally:
                loop.close()
    finally:
        server.close()
    return runs


def table(runs: dict, seconds: float) -> None:
    print(f"\nadaptive concurrency in real time: a local aiohttp server "
          f"admitting {CAPACITY} requests at once ({SERVICE * 1000:g} ms "
          f"each, a queue of {QUEUE_ROUNDS} x {CAPACITY} then 503s), client "
          f"timeout {TIMEOUT * 1000:g} ms, {seconds:g} s per contender")
    print(f"  {'contender':38} {'goodput/s':>9} {'p50 ms':>7} "
          f"{'p99 ms':>7} {'errors':>7} {'limit at end':>12}")
    for name, run in runs.items():
        end = f"{run.trace[-1][1]}" if run.trace else ""
        print(f"  {name:38} {run.goodput:9.1f} {run.p50 * 1000:7.1f} "
              f"{run.p99 * 1000:7.1f} {run.errors:7.2%} {end:>12}")


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve"]:
        run_fast(_serve())
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
