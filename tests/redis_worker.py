"""One worker process of the multi-process Redis tests.

    python redis_worker.py ROLE LOOP PORT NAME [OPTIONS as JSON]

The implementation is the one TASKBOUND_PURE_PYTHON selects. A worker
reports to the test through Redis itself, under keys beside the limiter's
(`NAME:...`), or through a second server (`observer` port) when the
limiter's server is to be restarted.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time

import redis.asyncio as aioredis

import taskbound
from taskbound.redis import RedisLimiter, RedisRateLimiter

# Count a task's tokens in, keep the high-water mark; count them out.
ENTER = """
local now = redis.call('INCRBY', KEYS[1], ARGV[1])
if now > tonumber(redis.call('GET', KEYS[2]) or '0') then
  redis.call('SET', KEYS[2], now)
end
return now
"""


class Census:
    """Tasks running at once across every worker, kept in Redis."""

    def __init__(self, client, name: str) -> None:
        self.client = client
        self.keys = [f"{name}:running", f"{name}:peak"]
        self.starts = f"{name}:starts"
        self.enter = client.register_script(ENTER)

    async def work(self, seconds: float, tokens: int = 1) -> None:
        await self.enter(keys=self.keys, args=[tokens])
        await self.client.rpush(self.starts, repr(time.time()))
        try:
            await asyncio.sleep(seconds)
        finally:
            await self.client.decrby(self.keys[0], tokens)


async def cap(client, name, options):
    """A group of tasks under the shared limiter."""
    census = Census(client, name)
    limiter = RedisLimiter(client, name, options["total"],
                           lease=options["lease"])
    async with taskbound.BoundedTaskGroup(limiter=limiter) as tg:
        for _ in range(options["tasks"]):
            await tg.spawn(census.work(options["seconds"]))
    await limiter.aclose()


async def weighted_cap(client, name, options):
    """A group whose tasks take 1 to `most` tokens each of the shared
    limiter."""
    census = Census(client, name)
    limiter = RedisLimiter(client, name, options["total"],
                           lease=options["lease"])
    draw = random.Random(options["seed"])
    async with taskbound.BoundedTaskGroup() as tg:
        for _ in range(options["tasks"]):
            n = draw.randint(1, options["most"])
            await tg.spawn(census.work(options["seconds"], n),
                           limiter=limiter, cost={limiter: n})
    await limiter.aclose()


async def budget(client, name, options):
    """Spend a shared budget of units per second from many tasks at once
    (starts of 1 to `most` units); record each start's time and units."""
    limiter = RedisRateLimiter(client, name, options["rate"],
                               burst=options["burst"])
    draw = random.Random(options["seed"])
    # Every worker begins at once: an interpreter still starting up would
    # record its first starts late, bunched with the others'.
    await client.incr(f"{name}:ready")
    while int(await client.get(f"{name}:ready")) < options["workers"]:
        await asyncio.sleep(0.005)

    async def spend(n):
        await limiter.acquire(n)
        await client.rpush(f"{name}:starts", f"{time.time()!r} {n}")

    await asyncio.gather(*[spend(draw.randint(1, options["most"]))
                           for _ in range(options["starts"])])
    await limiter.aclose()


async def pause(client, name, options):
    """Once `after` starts are recorded, pause the shared limiter (a
    RedisLimiter, or a RedisRateLimiter with `rate`) for `seconds`, and
    record when."""
    if "rate" in options:
        limiter = RedisRateLimiter(client, name, options["rate"],
                                   burst=options["burst"])
    else:
        limiter = RedisLimiter(client, name, options["total"],
                               lease=options["lease"])
    while await client.llen(f"{name}:starts") < options["after"]:
        await asyncio.sleep(0.005)
    await client.set(f"{name}:paused", repr(time.time()))
    limiter.pause(options["seconds"])
    await limiter.aclose()      # sends it


async def hold(client, name, options):
    """Take tokens, say so, and hold them until killed."""
    limiter = RedisLimiter(client, name, options["total"],
                           lease=options["lease"])
    async with taskbound.BoundedTaskGroup(limiter=limiter) as tg:
        for _ in range(options["tokens"]):
            await tg.spawn(asyncio.sleep(3600))
        # Tokens granted in separate exchanges lapse at separate times until
        # their first renewal (at lease/3) gives them all one expiry.
        await asyncio.sleep(options["lease"] / 2)
        await client.set(f"{name}:holding", options["tokens"])


async def line_up(client, name, options):
    """Wait once; record the order in which waiters are served."""
    limiter = RedisLimiter(client, name, options["total"],
                           lease=options["lease"])
    async with limiter:
        await client.rpush(f"{name}:served", options["tag"])
        await asyncio.sleep(0.02)
    await limiter.aclose()


async def rate(client, name, options):
    """Start at the shared rate; record each start's time."""
    limiter = RedisRateLimiter(client, name, options["rate"])
    for _ in range(options["starts"]):
        await limiter.acquire()
        await client.rpush(f"{name}:starts", repr(time.time()))


async def churn(client, name, options):
    """Take and give back tokens until the test sets NAME:stop on the
    observer server, riding out a restart of the limiter's server; the
    census lives on the observer server too."""
    observer = aioredis.Redis(port=options["observer"])
    census = Census(observer, name)
    limiter = RedisLimiter(client, name, options["total"],
                           lease=options["lease"])
    deadline = time.time() + options["seconds"]    # should the test die

    async def loop_once():
        while (time.time() < deadline
               and not await observer.exists(f"{name}:stop")):
            try:
                async with limiter:
                    await census.work(0.02)
                    await observer.incr(f"{name}:rounds")
                    # This process has seen the limiter's state: from now on
                    # a restart makes it recreate the state with a pause.
                    await observer.sadd(f"{name}:seen", os.getpid())
            except taskbound.LimiterUnavailable:
                await observer.incr(f"{name}:unavailable")
                await asyncio.sleep(0.05)

    await asyncio.gather(*[loop_once() for _ in range(options["tasks"])])
    await limiter.aclose()
    await observer.aclose()


ROLES = {"cap": cap, "hold": hold, "line_up": line_up, "rate": rate,
         "churn": churn, "weighted_cap": weighted_cap, "budget": budget,
         "pause": pause}


async def main(role, port, name, options):
    client = aioredis.Redis(port=port)
    try:
        await ROLES[role](client, name, options)
    finally:
        await client.aclose()


if __name__ == "__main__":
    role, loop, port, name = sys.argv[1:5]
    options = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
    coroutine = main(role, int(port), name, options)
    if loop == "uvloop":
        import uvloop
        uvloop.run(coroutine)
    else:
        asyncio.run(coroutine)
