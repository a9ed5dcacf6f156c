"""The bench's Redis row: acquire/release pairs of a RedisLimiter, one
after another over loopback, against a bare redis-py INCR/DECR pair (the
least a shared counter could cost: two round trips)."""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import uuid

from ._common import install_hint


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A redis-server on a free loopback port, saving nothing to disk, in a
    temporary directory that close() removes (the tests start theirs with
    it too). stop() and start() again keep the port: a restart that loses
    every key."""

    def __init__(self) -> None:
        self.binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.path.exists(self.binary):
            raise RuntimeError("redis-server is not on PATH (Debian: "
                               "apt-get install redis-server)")
        self._temporary = tempfile.TemporaryDirectory()
        self.directory = self._temporary.name
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", self.directory,
             "--logfile", os.path.join(self.directory, "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            # (Not under the sanitizer runtimes a test run may preload.)
            env={k: v for k, v in os.environ.items() if k != "LD_PRELOAD"})
        deadline = time.monotonic() + 10
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start on port "
                                   f"{self.port}; see {self.directory}")
            time.sleep(0.02)

    def _ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), 0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Kill the server; everything it held is lost."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def close(self) -> None:
        self.stop()
        self._temporary.cleanup()


def contenders() -> list:
    from . import _pycore
    from .redis import _classes
    found = [("INCR/DECR pair (redis-py)", None)]
    try:
        from . import _taskbound
        found.append(("RedisLimiter acquire/release [C]",
                      _classes(_taskbound.ExternalSource)[0]))
    except ImportError:
        pass
    found.append(("RedisLimiter acquire/release [Python]",
                  _classes(_pycore.ExternalSource)[0]))
    return found


async def run_pairs(url: str, limiter_type, pairs: int) -> float:
    import redis.asyncio as aioredis
    client = aioredis.Redis.from_url(url)
    name = f"bench-{uuid.uuid4().hex[:8]}"
    leftovers = [name]          # keys to delete after the run
    try:
        if limiter_type is None:
            start = time.perf_counter()
            for _ in range(pairs):
                await client.incr(name)
                await client.decr(name)
            return time.perf_counter() - start
        limiter = limiter_type(client, name, 1_000)
        leftovers.append(limiter._prefix + "meta")
        start = time.perf_counter()
        for _ in range(pairs):
            await limiter.acquire()
            limiter.release()
        await limiter.aclose()        # the last release reaches Redis
        return time.perf_counter() - start
    finally:
        await client.delete(*leftovers)
        await client.aclose()


def measure(url: str | None, pairs: int, rounds: int, new_loop,
            loop_kind: str, progress) -> list[dict] | str:
    """The rows, or why there are none."""
    try:
        import redis  # noqa: F401
    except ImportError:
        return f"redis-py is not installed ({install_hint('redis')})"
    server = None
    if url is None:
        if shutil.which("redis-server") is None:
            return ("no redis-server on PATH (install it, or give "
                    "--redis URL)")
        server = Server()
        server.start()
        url = f"redis://127.0.0.1:{server.port}"
    try:
        chosen = contenders()
        seconds: dict = {name: [] for name, _ in chosen}
        for round_no in range(rounds):
            for name, limiter_type in chosen:
                progress(f"Redis, round {round_no + 1}: {name}")
                loop = new_loop(loop_kind)
                try:
                    seconds[name].append(loop.run_until_complete(
                        run_pairs(url, limiter_type, pairs)))
                finally:
                    loop.close()
    finally:
        if server is not None:
            server.close()
    baseline = pairs / statistics.median(seconds[chosen[0][0]])
    rows = []
    for name, _ in chosen:
        rate = pairs / statistics.median(seconds[name])
        rows.append({"contender": name, "pairs_per_second": rate,
                     "ratio_to_incr_decr": rate / baseline,
                     "seconds": seconds[name]})
    return rows


def table(title: str, rows: list[dict]) -> None:
    width = max(len(row["contender"]) for row in rows)
    print(f"\n{title}")
    print(f"{'contender':<{width}}  {'pairs/s':>10}  {'x INCR/DECR':>11}")
    for row in rows:
        print(f"{row['contender']:<{width}}  "
              f"{row['pairs_per_second']:>10,.0f}  "
              f"{row['ratio_to_incr_decr']:>11.2f}")

