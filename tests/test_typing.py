"""The stubs: mypy --strict accepts typed user code and rejects wrong types.

The accepted example also runs, on each implementation and loop."""

from __future__ import annotations

import functools
import subprocess
import sys
import textwrap

GOOD = textwrap.dedent('''
    import asyncio
    from taskbound import (BoundedTaskGroup, KeyedLimiter, Limiter,
                           LimiterStatistics, RateLimiter, amap,
                           as_completed, gather)

    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    async def length(text: str) -> int:
        return len(text)

    async def main() -> tuple[int, int, LimiterStatistics, int | None,
                              list[int], tuple[int, int], list[int]]:
        shared = Limiter(4)
        rate = RateLimiter(1000, burst=10)
        async with shared:
            pass
        async with shared.hold(2):
            pass
        await shared.acquire(3)
        shared.release(3)
        async with BoundedTaskGroup(limit=2, limiter=[shared, rate]) as tg:
            task: asyncio.Task[int] = await tg.spawn(answer())
            other: asyncio.Task[int] = tg.create_task(answer(), name="other")
        per_text = KeyedLimiter(1)
        lengths: list[int] = [n async for n in amap(
            length, ["ab", "c"], limit=2, limiter=shared,
            item_limiter=lambda text: per_text[text],
            item_cost=lambda text: {shared: len(text)})]
        pair: tuple[int, int] = await gather(answer(), length("xyz"),
                                             limit=1)
        done: list[int] = []
        async with as_completed([answer()], limit=1) as futures:
            async for future in futures:
                done.append(future.result())
        return (task.result(), other.result(), shared.statistics(), tg.limit,
                lengths, pair, done)
''')

BAD = textwrap.dedent('''
    import asyncio
    from taskbound import BoundedTaskGroup

    async def answer() -> int:
        return 42

    async def main() -> None:
        async with BoundedTaskGroup(limit=2) as tg:
            task: asyncio.Task[str] = await tg.spawn(answer())
''')


REDIS = textwrap.dedent('''
    import asyncio
    import redis.asyncio
    from taskbound import BoundedTaskGroup, Limiter, LimiterStatistics, amap
    from taskbound.redis import RedisLimiter, RedisRateLimiter

    async def length(text: str) -> int:
        return len(text)

    async def main(client: redis.asyncio.Redis) -> tuple[
            LimiterStatistics, int, list[int]]:
        api = RedisLimiter(client, "api", 20, lease=10.0)
        starts = RedisRateLimiter(client, "api", 50, burst=5)
        async with BoundedTaskGroup(limit=2,
                                    limiter=[api, starts, Limiter(3)]) as tg:
            task: asyncio.Task[int] = await tg.spawn(length("abc"))
        lengths = [n async for n in amap(length, ["ab"], limiter=api)]
        await api.set_total_tokens(30)
        await api.aclose()
        await starts.aclose()
        return await api.statistics(), task.result(), lengths
''')

BAD_REDIS = textwrap.dedent('''
    import redis.asyncio
    from taskbound.redis import RedisLimiter

    async def main(client: redis.asyncio.Redis) -> int:
        api = RedisLimiter(client, "api", 20)
        return api.statistics().borrowed_tokens
''')


@functools.lru_cache(maxsize=None)
def mypy(source: str, tmp: str) -> subprocess.CompletedProcess:
    path = f"{tmp}/example_{abs(hash(source))}.py"
    with open(path, "w") as f:
        f.write(source)
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental",
         "--cache-dir=/dev/null", path],
        capture_output=True, text=True)


def test_typed_example_checks_and_runs(impl, run, tmp_path_factory):
    tmp = str(tmp_path_factory.getbasetemp())
    checked = mypy(GOOD, tmp)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    namespace: dict = {}
    exec(compile(GOOD, "example.py", "exec"), namespace)
    for name in ("BoundedTaskGroup", "KeyedLimiter", "Limiter",
                 "RateLimiter", "amap", "as_completed", "gather"):
        namespace[name] = getattr(impl, name)
    assert run(namespace["main"]()) == (42, 42, (4, 0, 0, None), 2, [2, 1],
                                        [42, 3], [42])


def test_wrong_task_type_is_rejected(impl, run, tmp_path_factory):
    checked = mypy(BAD, str(tmp_path_factory.getbasetemp()))
    assert checked.returncode == 1
    assert "incompatible type" in checked.stdout
    assert "Coroutine[Any, Any, int]" in checked.stdout
    assert "Awaitable[str]" in checked.stdout
    namespace: dict = {}
    exec(compile(BAD, "bad.py", "exec"), namespace)
    namespace["BoundedTaskGroup"] = impl.BoundedTaskGroup
    assert run(namespace["main"]()) is None   # runs: the error is in types


def test_typed_redis_example_checks_and_runs(impl, run, tmp_path_factory,
                                             redis_server):
    checked = mypy(REDIS, str(tmp_path_factory.getbasetemp()))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    namespace: dict = {}
    exec(compile(REDIS, "redis_example.py", "exec"), namespace)
    for name in ("BoundedTaskGroup", "Limiter", "amap"):
        namespace[name] = getattr(impl, name)
    namespace["RedisLimiter"], namespace["RedisRateLimiter"] = impl.redis

    async def main():
        import redis.asyncio
        client = redis.asyncio.Redis(port=redis_server.port)
        try:
            return await namespace["main"](client)
        finally:
            await client.aclose()

    assert run(main()) == ((30, 0, 0, None), 3, [2])


def test_redis_statistics_must_be_awaited(tmp_path_factory):
    checked = mypy(BAD_REDIS, str(tmp_path_factory.getbasetemp()))
    assert checked.returncode == 1
    assert "Coroutine" in checked.stdout and "borrowed_tokens" in checked.stdout
