"""The bench's HTTP row: a real workload. An aiohttp client fans out
requests to a local aiohttp server on loopback whose handler awaits a short
sleep, each contender bounding the requests in flight to `limit` its own
way (the bench's contenders, with a request as the item).

The server runs in a process of its own, and each contender's run in a
fresh one, so a run's peak RSS is its own (the kernel's high-water mark of
the process) and the client does not share its loop with the server. Where
the HTTP stack dominates, throughput ratios near 1 are what to expect; the
point is the memory, and that the bound costs nothing visible.

    python -m taskbound._benchhttp serve SLEEP
        prints the port, serves until its stdin closes
    python -m taskbound._benchhttp run CONTENDER URL REQUESTS LIMIT LOOP
        prints {"seconds", "peak_rss_kib", "start_rss_kib"} as JSON
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time

from ._common import install_hint

# Of the bench's contenders, those a user would reach for to fan out
# requests (the first is the baseline of the ratio column).
CONTENDERS = ("TaskGroup + Semaphore before create_task",
              "TaskGroup + Semaphore inside the task",
              "gather + Semaphore",
              "BoundedTaskGroup.spawn [C]",
              "amap [C]",
              "aiometer.amap",
              "quattro.TaskGroup(concurrency_limit)")


def _environment() -> dict:
    """The environment of the server's and the runs' processes. The wheels
    of aiohttp and of the libraries under it (multidict, yarl, propcache,
    frozenlist) are built for release interpreters and crash a debug one
    (multidict segfaults in its GC tracking), so there they run on the
    pure-Python code each ships for this, chosen by its documented switch."""
    env = dict(os.environ)
    if hasattr(sys, "gettotalrefcount"):
        for name in ("AIOHTTP", "MULTIDICT", "YARL", "PROPCACHE",
                     "FROZENLIST"):
            env[f"{name}_NO_EXTENSIONS"] = "1"
    return env


def missing() -> str | None:
    """Why the row cannot run, or None."""
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        return f"aiohttp is not installed ({install_hint('bench')})"
    return None


# -- the server process --

async def _serve(sleep: float) -> None:
    from aiohttp import web

    async def handle(request):
        await asyncio.sleep(sleep)
        return web.Response(text="ok")

    await serve_until_stdin_closes(handle)


async def serve_until_stdin_closes(handle) -> None:
    """Serves GET / with `handle` on a free loopback port, prints the port,
    and stops when the parent closes our stdin."""
    from aiohttp import web
    app = web.Application()
    app.router.add_get("/", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock, backlog=1024).start()
    print(sock.getsockname()[1], flush=True)
    loop = asyncio.get_running_loop()
    closed = loop.create_future()
    loop.add_reader(sys.stdin.fileno(), lambda: closed.done()
                    or closed.set_result(None))
    await closed
    await runner.cleanup()


def run_fast(main) -> None:
    """A server's loop: uvloop where it is installed, so that the client
    is what is measured."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


class Server:
    """A server process (`python -m MODULE serve ARGS...`), on the free
    loopback port it prints."""

    def __init__(self, *args: str, module: str = "taskbound._benchhttp"
                 ) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, "serve", *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env=_environment())
        line = self.process.stdout.readline()
        if not line.strip().isdigit():
            self.close()
            raise RuntimeError(f"the bench's HTTP server ({module}) did "
                               "not start")
        self.url = f"http://127.0.0.1:{int(line)}/"

    def close(self) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()


# -- a contender's process --

def _rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


async def _fan_out(run, url: str, requests: int, limit: int) -> dict:
    import aiohttp
    # No pool limit of aiohttp's own: the contender's bound is the bound.
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def fetch(i: int) -> int:
            async with session.get(url) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}")
                return response.status

        start_rss = _rss_kib()
        start = time.perf_counter()
        await run(requests, limit, fetch)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_rss_kib": _rss_kib(),
            "start_rss_kib": start_rss}


def _run_contender(name: str, url: str, requests: int, limit: int,
                   loop_kind: str) -> dict:
    from . import _bench
    found, _ = _bench.contenders()
    contender = next(c for c in found if c.name == name)
    loop = _bench.new_loop(loop_kind)
    try:
        return loop.run_until_complete(
            _fan_out(contender.run, url, requests, limit))
    finally:
        loop.close()


# -- the bench's side --

def measure(requests: int, limit: int, sleep: float, rounds: int,
            loop_kind: str, available: set, progress) -> list[dict] | str:
    """The rows (medians of interleaved rounds), or why there are none."""
    why = missing()
    if why:
        return why
    chosen = [name for name in CONTENDERS if name in available]
    samples: dict = {name: [] for name in chosen}
    server = Server(str(sleep))

    def run(name: str, count: int) -> dict:
        done = subprocess.run(
            [sys.executable, "-m", "taskbound._benchhttp", "run", name,
             server.url, str(count), str(limit), loop_kind],
            capture_output=True, text=True, env=_environment())
        if done.returncode != 0:
            raise RuntimeError(f"the HTTP run of {name} failed:\n"
                               f"{done.stderr}")
        return json.loads(done.stdout)

    try:
        # The server's first requests are slower (its code is cold): an
        # untimed run first, so no contender pays for them.
        progress("HTTP, warming the server up")
        run(chosen[0], max(limit, requests // 10))
        for round_no in range(rounds):
            for name in chosen:
                progress(f"HTTP, round {round_no + 1}: {name}")
                samples[name].append(run(name, requests))
    finally:
        server.close()
    base = statistics.median(s["seconds"] for s in samples[chosen[0]])
    rows = []
    for name in chosen:
        seconds = statistics.median(s["seconds"] for s in samples[name])
        peak = statistics.median(s["peak_rss_kib"] for s in samples[name])
        grew = statistics.median(s["peak_rss_kib"] - s["start_rss_kib"]
                                 for s in samples[name])
        rows.append({"contender": name,
                     "requests_per_second": requests / seconds,
                     "ratio_to_baseline": base / seconds,
                     "peak_rss_kib": peak, "rss_growth_kib": grew})
    return rows


def table(title: str, rows: list[dict]) -> None:
    width = max(len(row["contender"]) for row in rows)
    print(f"\n{title}")
    print(f"{'contender':<{width}}  {'requests/s':>10}  {'x baseline':>10}  "
          f"{'peak RSS MiB':>12}  {'grew MiB':>8}")
    for row in rows:
        print(f"{row['contender']:<{width}}  "
              f"{row['requests_per_second']:>10,.0f}  "
              f"{row['ratio_to_baseline']:>10.2f}  "
              f"{row['peak_rss_kib'] / 1024:>12.1f}  "
              f"{row['rss_growth_kib'] / 1024:>8.1f}")


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve"]:
        run_fast(_serve(float(argv[1])))
        return 0
    if argv[:1] == ["run"]:
        name, url, requests, limit, loop_kind = argv[1:6]
        print(json.dumps(_run_contender(name, url, int(requests), int(limit),
                                        loop_kind)))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
