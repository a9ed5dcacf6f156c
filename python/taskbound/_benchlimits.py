"""The bench's limits-shaped-like-real-ones rows, on simulated servers (an
`asyncio.sleep` per request), so what is measured is the scheduling:

- crawl: many hosts, at most PER_HOST requests per host and CRAWL_LIMIT in
  all, one host slow. The other hosts' throughput with the slow host
  against without it, for `amap(item_limiter=...)` (a busy host's URLs are
  parked, the workers go on with other hosts), `spawn(limiter=...)` (the
  producer waits for the URL's host: head-of-line) and the common stdlib
  design, TaskGroup + Semaphore(CRAWL_LIMIT) before create_task + a
  Semaphore per host inside the task (a task waiting for its host keeps
  one of the global slots: head-of-line blocking).
- llm: an API client under a requests-per-minute and a tokens-per-minute
  budget (scaled to seconds), each request costing its prompt's tokens:
  the most units started in any window against each budget.
- disk: downloads of random sizes to a small disk, a Limiter of bytes with
  each download's size as its cost: the peak bytes on disk and the
  throughput.
- push-back: a server that answers 429 with Retry-After when more than its
  capacity arrive in a second; a client that pauses its limiter on a 429
  against one that retries each request after Retry-After on its own.
"""

from __future__ import annotations

import asyncio
import collections
import random
import time

HOSTS = 50
PER_HOST = 4
CRAWL_LIMIT = 100
FAST, SLOW = 0.01, 0.5       # seconds per request
CRAWL_CAP = 2.0              # a run stops then, or once the fast hosts are done


def crawl_urls(count: int) -> list:
    """(host, number) pairs, the hosts taking turns; host 0 is the slow
    one when there is one."""
    return [(i % HOSTS, i) for i in range(count)]


class Crawl:
    """The simulated hosts, and when each fast-host request finished."""

    def __init__(self, slow: bool, urls: list) -> None:
        self.slow = slow
        self.fast = sum(1 for url in urls if not (slow and url[0] == 0))
        self.started = time.perf_counter()
        self.fast_done: list = []
        self.all_fast_done = asyncio.Event()

    async def fetch(self, url) -> None:
        if self.slow and url[0] == 0:
            await asyncio.sleep(SLOW)
        else:
            await asyncio.sleep(FAST)
            self.fast_done.append(time.perf_counter())
            if len(self.fast_done) == self.fast:
                self.all_fast_done.set()

    async def run(self, crawler, urls) -> None:
        """The crawl, until the fast hosts are done or CRAWL_CAP passed:
        the slow host's own requests are not what is measured."""
        crawl = asyncio.ensure_future(crawler(urls, self))
        done = asyncio.ensure_future(self.all_fast_done.wait())
        await asyncio.wait({crawl, done}, timeout=CRAWL_CAP,
                           return_when=asyncio.FIRST_COMPLETED)
        for task in (crawl, done):
            task.cancel()
        await asyncio.gather(crawl, done, return_exceptions=True)
        if not crawl.cancelled() and crawl.exception() is not None:
            raise crawl.exception()

    def fast_rate(self) -> float:
        """Fast-host requests per second, up to the last of them."""
        return len(self.fast_done) / (self.fast_done[-1] - self.started)


def crawlers(taskbound) -> dict:
    async def amap_item_limiter(urls, crawl):
        per_host = taskbound.KeyedLimiter(PER_HOST)
        async for _ in taskbound.amap(
                crawl.fetch, urls, limit=CRAWL_LIMIT, ordered=False,
                item_limiter=lambda url: per_host[url[0]]):
            pass

    async def spawn_limiter(urls, crawl):
        per_host = taskbound.KeyedLimiter(PER_HOST)
        async with taskbound.BoundedTaskGroup(CRAWL_LIMIT) as tg:
            for url in urls:
                await tg.spawn(crawl.fetch(url), limiter=per_host[url[0]])

    async def semaphores(urls, crawl):
        slots = asyncio.Semaphore(CRAWL_LIMIT)
        per_host: dict = collections.defaultdict(
            lambda: asyncio.Semaphore(PER_HOST))

        async def guarded(url):
            try:
                async with per_host[url[0]]:
                    await crawl.fetch(url)
            finally:
                slots.release()

        async with asyncio.TaskGroup() as tg:
            for url in urls:
                await slots.acquire()
                tg.create_task(guarded(url))

    return {"amap(item_limiter=per_host[...])": amap_item_limiter,
            "spawn(limiter=per_host[...])": spawn_limiter,
            "TaskGroup + Semaphore + per-host Semaphore": semaphores}


def measure_crawl(taskbound, urls: int, rounds: int, new_loop, loop_kind,
                  progress) -> dict:
    """name -> (fast-host requests/s without a slow host, with one)."""
    figures: dict = {}
    for name, crawler in crawlers(taskbound).items():
        rates = {False: [], True: []}
        for round_ in range(rounds):
            for slow in (False, True):
                progress(f"crawl {name}, slow host {slow}, round {round_}")
                loop = new_loop(loop_kind)
                try:
                    crawl = Crawl(slow, crawl_urls(urls))
                    loop.run_until_complete(crawl.run(crawler,
                                                      crawl_urls(urls)))
                finally:
                    loop.close()
                rates[slow].append(crawl.fast_rate())
        figures[name] = (max(rates[False]), max(rates[True]))
    progress("")
    return figures


def crawl_table(urls: int, figures: dict) -> None:
    print(f"\ncrawl: {urls:,} URLs over {HOSTS} hosts taking turns, "
          f"{PER_HOST} per host and {CRAWL_LIMIT} in all; a request takes "
          f"{FAST * 1000:g} ms, on the slow host {SLOW * 1000:g} ms; the "
          f"other hosts' requests per second (each run up to "
          f"{CRAWL_CAP:g} s), best of the rounds")
    print(f"  {'design':<44} {'others/s alone':>15} {'with slow host':>15} "
          f"{'kept':>6}")
    for name, (alone, slowed) in figures.items():
        print(f"  {name:<44} {alone:>15,.0f} {slowed:>15,.0f} "
              f"{slowed / alone:>6.2f}")


def most_in_window(starts: list, window: float) -> int:
    """The most units started in any stretch of `window` seconds."""
    most, begin, units = 0, 0, 0
    for when, n in starts:
        units += n
        while starts[begin][0] <= when - window:
            units -= starts[begin][1]
            begin += 1
        most = max(most, units)
    return most


async def llm_client(taskbound, requests: int, rpm: int, tpm: int,
                     seed: int = 7) -> tuple:
    """Requests with prompts of 10-200 tokens under two budgets per
    'minute' (one second here); returns the starts of each."""
    requests_per = taskbound.RateLimiter(rpm, per=1.0, burst=rpm // 10)
    tokens_per = taskbound.RateLimiter(tpm, per=1.0, burst=tpm // 10)
    draw = random.Random(seed)
    prompts = [draw.randint(10, 200) for _ in range(requests)]
    starts: list = []
    clock = time.perf_counter

    async def complete(prompt: int) -> None:
        starts.append((clock(), prompt))
        await asyncio.sleep(0.02)        # the model answers

    async with taskbound.BoundedTaskGroup(50, limiter=requests_per) as tg:
        for prompt in prompts:
            await tg.spawn(complete(prompt), limiter=tokens_per,
                           cost={tokens_per: prompt})
    return starts


def measure_llm(taskbound, requests: int, new_loop, loop_kind) -> dict:
    rpm, tpm = 100, 8_000
    loop = new_loop(loop_kind)
    try:
        started = time.perf_counter()
        starts = loop.run_until_complete(llm_client(taskbound, requests, rpm,
                                                    tpm))
        elapsed = time.perf_counter() - started
    finally:
        loop.close()
    return {"rpm": rpm, "tpm": tpm, "seconds": elapsed,
            "requests": len(starts),
            "most requests in 1 s": most_in_window(
                [(when, 1) for when, _ in starts], 1.0),
            "most tokens in 1 s": most_in_window(starts, 1.0),
            "tokens": sum(n for _, n in starts)}


def llm_table(figures: dict) -> None:
    f = figures
    print(f"\nllm: {f['requests']} requests of 10-200 tokens under "
          f"{f['rpm']} requests and {f['tpm']:,} tokens per second (burst a "
          "tenth of each)")
    print(f"  most requests started in any 1 s: {f['most requests in 1 s']} "
          f"(budget {f['rpm'] + f['rpm'] // 10}); most tokens: "
          f"{f['most tokens in 1 s']:,} (budget "
          f"{f['tpm'] + f['tpm'] // 10:,}); throughput "
          f"{f['tokens'] / f['seconds']:,.0f} tokens/s")


async def downloads(taskbound, count: int, disk: int, seed: int = 3) -> dict:
    """Files of 1-200 MB to a disk of `disk` MB, 20 downloads at once."""
    space = taskbound.Limiter(disk)
    draw = random.Random(seed)
    sizes = [draw.randint(1, 200) for _ in range(count)]
    on_disk = {"now": 0, "peak": 0}

    async def download(size: int) -> None:
        on_disk["now"] += size
        on_disk["peak"] = max(on_disk["peak"], on_disk["now"])
        await asyncio.sleep(size / 10_000)      # 10 GB/s, simulated
        on_disk["now"] -= size                   # moved off the disk

    started = time.perf_counter()
    async with taskbound.BoundedTaskGroup(20) as tg:
        for size in sizes:
            await tg.spawn(download(size), limiter=space, cost={space: size})
    return {"files": count, "disk": disk, "peak": on_disk["peak"],
            "mb": sum(sizes), "seconds": time.perf_counter() - started}


def measure_disk(taskbound, count: int, new_loop, loop_kind) -> dict:
    loop = new_loop(loop_kind)
    try:
        return loop.run_until_complete(downloads(taskbound, count, 1_000))
    finally:
        loop.close()


def disk_table(figures: dict) -> None:
    f = figures
    print(f"\ndisk: {f['files']} downloads of 1-200 MB to a {f['disk']:,} MB "
          "disk, 20 at once, each taking its size of a Limiter of MB")
    print(f"  peak on disk {f['peak']:,} MB of {f['disk']:,}; "
          f"{f['mb'] / f['seconds']:,.0f} MB/s")


class PushingBackServer:
    """Takes `capacity` requests a second; beyond that, 429 with a
    Retry-After of the rest of the second."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.second = -1
        self.taken = 0
        self.refused = 0

    async def call(self) -> float | None:
        """None when served, else the Retry-After."""
        now = asyncio.get_running_loop().time()
        if int(now) != self.second:
            self.second, self.taken = int(now), 0
        if self.taken >= self.capacity:
            self.refused += 1
            return int(now) + 1 - now
        self.taken += 1
        await asyncio.sleep(0.005)
        return None


def push_back_clients(taskbound) -> dict:
    """Two clients of 50 calls at once that retry a refused call: one
    pauses the limiter they share until Retry-After, one has each call
    sleep it under a Semaphore."""
    def client(make_api, on_429):
        async def calls_to(server, calls):
            api = make_api()

            async def call():
                while True:
                    async with api:
                        retry_after = await server.call()
                    if retry_after is None:
                        return
                    await on_429(api, retry_after)

            async with asyncio.TaskGroup() as tg:
                for _ in range(calls):
                    tg.create_task(call())
        return calls_to

    async def pause(api, retry_after):
        api.pause(retry_after)

    async def sleep(api, retry_after):
        await asyncio.sleep(retry_after)

    return {"Limiter.pause(retry_after)":
            client(lambda: taskbound.Limiter(50), pause),
            "Semaphore, each task sleeps Retry-After":
            client(lambda: asyncio.Semaphore(50), sleep)}


def measure_push_back(taskbound, calls: int, new_loop, loop_kind) -> dict:
    """name -> (429s per call, seconds)."""
    figures = {}
    for name, client in push_back_clients(taskbound).items():
        server = PushingBackServer(capacity=200)
        loop = new_loop(loop_kind)
        try:
            started = time.perf_counter()
            loop.run_until_complete(client(server, calls))
            figures[name] = (server.refused / calls,
                             time.perf_counter() - started)
        finally:
            loop.close()
    return figures


def push_back_table(calls: int, figures: dict) -> None:
    print(f"\npush-back: {calls:,} calls, 50 at once, to a server taking 200 "
          "a second (429 with Retry-After beyond)")
    print(f"  {'client':<40} {'429s per call':>14} {'seconds':>8}")
    for name, (refused, seconds) in figures.items():
        print(f"  {name:<40} {refused:>14.2f} {seconds:>8.2f}")
