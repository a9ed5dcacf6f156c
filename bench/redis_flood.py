"""A flood of create_task() children waiting on one RedisLimiter: tasks per
second at several sizes, side by side. Throughput that falls as the flood
grows means an exchange with Redis costs more per waiter than it should.

Usage: python bench/redis_flood.py [--redis URL] [--total N] [--loop L]
       (without --redis, starts a redis-server from PATH for the run)
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

import redis.asyncio as aioredis

import taskbound
from taskbound import _benchredis
from taskbound.redis import RedisLimiter


async def flood(url: str, total: int, children: int) -> float:
    client = aioredis.Redis.from_url(url)
    limiter = RedisLimiter(client, f"flood-{uuid.uuid4().hex[:8]}", total)
    start = time.perf_counter()
    async with taskbound.BoundedTaskGroup(limiter=limiter) as tg:
        for _ in range(children):
            tg.create_task(asyncio.sleep(0.001))
    elapsed = time.perf_counter() - start
    await limiter.aclose()
    await client.aclose()
    return children / elapsed


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis", metavar="URL")
    parser.add_argument("--total", type=int, default=10)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"],
                        default="asyncio")
    args = parser.parse_args()
    server = None
    if not args.redis:
        server = _benchredis.Server()
        server.start()
    url = args.redis or f"redis://127.0.0.1:{server.port}"
    try:
        for children in (500, 2_000, 8_000):
            coroutine = flood(url, args.total, children)
            if args.loop == "uvloop":
                import uvloop
                rate = uvloop.run(coroutine)
            else:
                rate = asyncio.run(coroutine)
            print(f"{children:>6,} children, RedisLimiter({args.total}): "
                  f"{rate:,.0f} tasks/s")
    finally:
        if server is not None:
            server.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
