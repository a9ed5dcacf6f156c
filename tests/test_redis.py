"""RedisLimiter and RedisRateLimiter in one process, against a real
redis-server: several limiter objects on separate clients stand for separate
processes (tests/test_redis_processes.py runs real ones)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import math
import os
import signal
import time

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from taskbound import LimiterStatistics, LimiterUnavailable, WouldBlock
from taskbound._benchredis import free_port
from taskbound.redis import _classes

from helpers import MODULES, Gauge, unique_name


@contextlib.asynccontextmanager
async def clients(server, count=1, **options):
    made = [aioredis.Redis(port=server.port, **options)
            for _ in range(count)]
    try:
        yield made
    finally:
        for client in made:
            await client.aclose()


@contextlib.asynccontextmanager
async def two_processes(RedisLimiter, server, total, leases=(5, 5)):
    """Two limiter objects of one name on separate clients, as two
    processes would have them; closed at the end."""
    name = unique_name()
    async with clients(server, 2) as made:
        pair = [RedisLimiter(client, name, total, lease=lease)
                for client, lease in zip(made, leases)]
        try:
            yield pair
        finally:
            for limiter in pair:
                await limiter.aclose()


async def until(predicate, timeout: float = 5.0) -> None:
    """Wait (in real time) for an async predicate to hold."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


def nothing_left(limiter) -> bool:
    """Nothing of this limiter's bookkeeping is left over (closed, idle),
    its notification task included."""
    parts = ["_line", "_waiter_of", "_unsent", "_held", "_returns", "_left",
             "_timers", "_listener"]
    return limiter._worker is None and not any(
        getattr(limiter, part, None) for part in parts)


async def waiting(limiter) -> int:
    return (await limiter.statistics()).waiting


def test_group_holds_the_cap_with_a_local_limiter(impl, run, redis_server):
    RedisLimiter, _ = impl.redis

    async def main():
        async with clients(redis_server) as (client,):
            shared = RedisLimiter(client, unique_name(), 6, lease=5)
            gauge = Gauge()
            async with impl.BoundedTaskGroup(
                    limiter=[shared, impl.Limiter(10)]) as tg:
                assert shared in tg.limiters
                for _ in range(30):
                    await tg.spawn(gauge.item(delay=0.02))
            await shared.aclose()
            return gauge.peak, await shared.statistics(), nothing_left(shared)

    assert run(main()) == (6, LimiterStatistics(6, 0, 0), True)


def test_limiters_on_separate_clients_share_one_cap(impl, run, redis_server):
    RedisLimiter, _ = impl.redis
    name = unique_name()

    async def main():
        async with clients(redis_server, 3) as made:
            limiters = [RedisLimiter(client, name, 4, lease=5)
                        for client in made]
            gauge = Gauge()

            async def one_process(limiter):
                async with impl.BoundedTaskGroup(limiter=limiter) as tg:
                    for _ in range(12):
                        await tg.spawn(gauge.item(delay=0.02))

            await asyncio.gather(*map(one_process, limiters))
            for limiter in limiters:
                await limiter.aclose()
            return gauge.peak, await limiters[0].statistics()

    assert run(main()) == (4, LimiterStatistics(4, 0, 0))


def test_waiters_of_every_client_are_served_in_arrival_order(
        impl, run, redis_server):
    RedisLimiter, _ = impl.redis

    async def main():
        async with two_processes(RedisLimiter, redis_server, 1) as (a, b):
            await a.acquire()
            order = []

            async def waiter(limiter, tag):
                async with limiter:
                    order.append(tag)
                    await asyncio.sleep(0.01)

            tasks = []
            for limiter, tag in [(b, "b1"), (a, "a1"), (b, "b2"),
                                 (a, "a2"), (a, "a3"), (b, "b3")]:
                tasks.append(asyncio.create_task(waiter(limiter, tag)))
                count = len(tasks)
                await until(lambda: _at_least(waiting(a), count))
            a.release()
            await asyncio.gather(*tasks)
            await a.aclose()
            await b.aclose()
            return order, await a.statistics()

    order, stats = run(main())
    assert order == ["b1", "a1", "b2", "a2", "a3", "b3"]
    assert stats == LimiterStatistics(1, 0, 0)


async def _at_least(value, count) -> bool:
    return await value >= count


def test_a_cancelled_waiter_leaves_nothing_behind(impl, run, redis_server):
    RedisLimiter, _ = impl.redis

    async def main():
        async with two_processes(RedisLimiter, redis_server, 1) as (a, b):
            await a.acquire()
            stuck = asyncio.create_task(b.acquire())
            await until(lambda: _at_least(waiting(a), 1))
            stuck.cancel()
            with pytest.raises(asyncio.CancelledError):
                await stuck
            await until(lambda: _equals(waiting(a), 0))
            a.release()
            async with b:          # the cancelled waiter holds nothing
                held = b.held_tokens
            await a.aclose()
            await b.aclose()
            return held, nothing_left(a) and nothing_left(b), \
                await a.statistics()

    assert run(main()) == (1, True, LimiterStatistics(1, 0, 0))


async def _equals(value, count) -> bool:
    return await value == count


def test_an_aborting_group_leaves_no_token_taken(impl, run, redis_server):
    RedisLimiter, _ = impl.redis

    async def main():
        async with clients(redis_server) as (client,):
            shared = RedisLimiter(client, unique_name(), 1, lease=5)

            async def fail():
                await asyncio.sleep(0.05)
                raise ValueError("boom")

            with pytest.raises(ExceptionGroup) as info:
                async with impl.BoundedTaskGroup(limiter=shared) as tg:
                    await tg.spawn(fail())
                    await tg.spawn(asyncio.sleep(10))   # waits; never runs
            await shared.aclose()
            return info.value.exceptions, await shared.statistics()

    errors, stats = run(main())
    assert [type(e) for e in errors] == [ValueError]
    assert stats == LimiterStatistics(1, 0, 0)


def test_raising_the_total_lets_waiters_in_at_once(impl, run, redis_server):
    RedisLimiter, _ = impl.redis

    async def main():
        # A lease of 60 s: the fallback timer would take 5 s, so a prompt
        # start proves the notification.
        async with two_processes(RedisLimiter, redis_server, 1,
                                 (60, 60)) as (a, b):
            await a.acquire()
            waiters = [asyncio.create_task(b.acquire()) for _ in range(2)]
            await until(lambda: _at_least(waiting(a), 2))
            started = time.monotonic()
            await a.set_total_tokens(3)
            await asyncio.gather(*waiters)
            elapsed = time.monotonic() - started
            seen = (a.total_tokens, b.total_tokens, await b.statistics())
            a.release()
            b.release()
            b.release()
            await a.aclose()
            await b.aclose()
            return elapsed, seen

    elapsed, seen = run(main())
    assert elapsed < 2.0
    assert seen == (3, 3, LimiterStatistics(3, 3, 0))


def test_lowering_the_total_lets_holders_finish(impl, run, redis_server):
    RedisLimiter, _ = impl.redis

    async def main():
        async with clients(redis_server) as (client,):
            shared = RedisLimiter(client, unique_name(), 3, lease=5)
            for _ in range(3):
                await shared.acquire()
            await shared.set_total_tokens(1)
            during = await shared.statistics()
            late = asyncio.create_task(shared.acquire())
            for _ in range(2):
                shared.release()
            await asyncio.sleep(0.2)
            blocked = not late.done()
            shared.release()
            await late
            shared.release()
            await shared.aclose()
            return during, blocked, await shared.statistics()

    assert run(main()) == (LimiterStatistics(1, 3, 0), True,
                           LimiterStatistics(1, 0, 0))


def test_streaming_helpers_take_a_redis_limiter(impl, run, redis_server):
    RedisLimiter, RedisRateLimiter = impl.redis

    async def main():
        async with clients(redis_server) as (client,):
            shared = RedisLimiter(client, unique_name(), 3, lease=5)
            gauge = Gauge()

            async def double(item):
                await gauge.item(delay=0.01)
                return 2 * item

            mapped = [x async for x in impl.amap(double, range(12),
                                                 limiter=shared)]
            async with impl.as_completed([double(i) for i in range(6)],
                                         limiter=shared) as futures:
                done = [future.result() async for future in futures]
            gathered = await impl.gather(*[double(i) for i in range(6)],
                                         limiter=shared)
            await shared.aclose()
            return mapped, sorted(done), gathered, gauge.peak, \
                await shared.statistics()

    mapped, done, gathered, peak, stats = run(main())
    assert mapped == [2 * i for i in range(12)]
    assert done == gathered == [2 * i for i in range(6)]
    assert peak == 3
    assert stats == LimiterStatistics(3, 0, 0)


def test_bad_arguments_are_refused(impl, redis_server):
    RedisLimiter, RedisRateLimiter = impl.redis
    client = aioredis.Redis(port=redis_server.port)
    with pytest.raises(TypeError, match="redis.asyncio.Redis"):
        RedisLimiter("redis://localhost", "n", 1)
    for name, error in [(5, TypeError), ("", ValueError),
                        ("a{b}", ValueError), ("x" * 201, ValueError),
                        ("a\nb", ValueError)]:
        with pytest.raises(error, match="name"):
            RedisLimiter(client, name, 1)
        with pytest.raises(error, match="name"):
            RedisRateLimiter(client, name, 1)
    for total, error in [(-1, ValueError), (1.5, TypeError),
                         (True, TypeError), ("3", TypeError),
                         (math.inf, TypeError)]:
        with pytest.raises(error, match="total_tokens"):
            RedisLimiter(client, "n", total)
    for lease, error in [(0, ValueError), (-1, ValueError),
                         (math.nan, ValueError), (math.inf, ValueError),
                         (0.05, ValueError), ("1", TypeError)]:
        with pytest.raises(error, match="lease"):
            RedisLimiter(client, "n", 1, lease=lease)
    for args, error in [((0,), ValueError), ((1, -1.0), ValueError),
                        ((1, 1.0, 0), ValueError), ((1, 1.0, 1.5), TypeError),
                        ((math.nan,), ValueError), (("2",), TypeError)]:
        with pytest.raises(error):
            RedisRateLimiter(client, "n", *args)
    limiter = RedisLimiter(client, "n", 1)
    with pytest.raises(RuntimeError, match="holds no tokens"):
        limiter.release()


def test_misuse_in_a_loop_changes_nothing(impl, run, redis_server):
    RedisLimiter, _ = impl.redis
    other = "python" if impl.name == "c" else "c"

    async def main():
        async with clients(redis_server) as (client,):
            shared = RedisLimiter(client, unique_name(), 2, lease=5)
            with pytest.raises(WouldBlock, match="await acquire"):
                shared.acquire_nowait()
            with pytest.raises(ValueError):
                await shared.set_total_tokens(-1)
            with pytest.raises(TypeError):
                await shared.set_total_tokens(2.5)
            # The other implementation's RedisLimiter is not a limiter of
            # this one's.
            foreign = importlib.import_module(MODULES[other])
            ForeignLimiter, _ = _classes(foreign.ExternalSource)
            stranger = ForeignLimiter(client, unique_name(), 1)
            with pytest.raises(TypeError, match="limiter must be"):
                impl.BoundedTaskGroup(limiter=stranger)
            await shared.acquire()
            shared.release()
            await shared.aclose()
            return await shared.statistics()

    assert run(main()) == LimiterStatistics(2, 0, 0)


def test_unreachable_redis_fails_the_wait_and_holds_nothing(impl, run):
    RedisLimiter, RedisRateLimiter = impl.redis
    port = free_port()             # nothing listens there

    async def main():
        # Without the client's own retries (ten by default, ~4 s).
        client = aioredis.Redis(port=port, socket_connect_timeout=0.5,
                                retry=Retry(NoBackoff(), 0))
        limiter = RedisLimiter(client, unique_name(), 2)
        rate = RedisRateLimiter(client, unique_name(), 5)
        errors = []
        with pytest.raises(LimiterUnavailable) as info:
            await limiter.acquire()
        errors.append(info.value)
        with pytest.raises(LimiterUnavailable) as info:
            await rate.acquire()
        errors.append(info.value)
        with pytest.raises(ExceptionGroup) as group:
            async with impl.BoundedTaskGroup(limiter=limiter) as tg:
                await tg.spawn(asyncio.sleep(1))    # closed, never run
        errors.extend(group.value.exceptions)
        with pytest.raises(ExceptionGroup) as group:
            async with impl.BoundedTaskGroup(limiter=limiter) as tg:
                child = tg.create_task(asyncio.sleep(1))
        errors.extend(group.value.exceptions)
        assert child.done() and isinstance(child.exception(),
                                           LimiterUnavailable)
        with pytest.raises(LimiterUnavailable):
            await limiter.statistics()
        held = limiter.held_tokens
        await limiter.aclose()
        await rate.aclose()
        await client.aclose()
        return errors, held

    errors, held = run(main())
    assert [type(e) for e in errors] == [LimiterUnavailable] * 4
    assert all(isinstance(e, OSError) and e.__cause__ is not None
               and "could not be reached" in str(e) for e in errors)
    assert held == 0


def test_a_script_forgotten_between_load_and_call_is_a_lapse(
        impl, run, own_redis_server):
    """A server that restarts between redis-py's loading of a script and
    its call has forgotten the script: the wait fails as unavailable, holds
    nothing, and the next call loads it again."""
    RedisLimiter, RedisRateLimiter = impl.redis

    async def main():
        async with clients(own_redis_server) as (client,):
            load = client.script_load

            async def load_then_forget(script):
                sha = await load(script)
                await client.script_flush()
                return sha

            limiter = RedisLimiter(client, unique_name(), 1)
            rate = RedisRateLimiter(client, unique_name(), 5)
            await client.script_flush()
            client.script_load = load_then_forget
            errors = []
            for call in (limiter.acquire, rate.acquire, limiter.statistics):
                try:
                    await call()
                except LimiterUnavailable as error:
                    errors.append(error)
            forgetting = limiter.held_tokens
            client.script_load = load
            await limiter.acquire()
            await rate.acquire()
            holding = await limiter.statistics()
            limiter.release()
            await limiter.aclose()
            await rate.aclose()
            return errors, forgetting, holding, await limiter.statistics()

    errors, forgetting, holding, after = run(main())
    assert [type(e.__cause__).__name__ for e in errors] == \
        ["NoScriptError"] * 3
    assert forgetting == 0
    assert holding == LimiterStatistics(1, 1, 0)
    assert after == LimiterStatistics(1, 0, 0)


def test_a_holder_cut_off_keeps_running_and_its_release_is_harmless(
        impl, run, own_redis_server):
    RedisLimiter, _ = impl.redis
    server = own_redis_server

    async def main():
        async with clients(server, socket_timeout=0.2) as (client,):
            limiter = RedisLimiter(client, unique_name(), 1, lease=0.5)
            steps = []
            async with limiter:
                steps.append("holding")
                os.kill(server.process.pid, signal.SIGSTOP)
                try:
                    await asyncio.sleep(1.2)    # renewals time out
                    steps.append("still running")
                finally:
                    os.kill(server.process.pid, signal.SIGCONT)
            steps.append("released")
            await limiter.aclose()
            return steps, await limiter.statistics()

    steps, stats = run(main())
    assert steps == ["holding", "still running", "released"]
    assert stats == LimiterStatistics(1, 0, 0)


def test_after_a_restart_nobody_new_is_let_in_past_the_holders(
        impl, run, own_redis_server):
    """The server loses every lease. The holders re-register theirs with
    their next renewal; until the longest lease in use has passed, the
    limiter lets nobody in, however quick the newcomer."""
    RedisLimiter, _ = impl.redis
    server = own_redis_server

    async def main():
        # The holder renews every 0.5 s; the newcomer asks every 0.1 s.
        async with two_processes(RedisLimiter, server, 2,
                                 (1.5, 0.3)) as (a, b):
            first_done, second_done = asyncio.Event(), asyncio.Event()
            log = []

            async def holder(done):
                async with a:
                    await done.wait()

            async def newcomer():
                while True:
                    try:
                        await b.acquire()
                        break
                    except LimiterUnavailable:
                        log.append("unavailable")
                        await asyncio.sleep(0.02)
                log.append("granted")
                b.release()

            holders = [asyncio.create_task(holder(first_done)),
                       asyncio.create_task(holder(second_done))]
            while a.held_tokens < 2:
                await asyncio.sleep(0.01)
            waiter = asyncio.create_task(newcomer())
            await until(lambda: _at_least(waiting(a), 1))
            server.stop()
            server.start()
            await asyncio.sleep(2.0)        # past the longest lease
            early = "granted" in log
            during = await a.statistics()
            first_done.set()
            await asyncio.wait_for(waiter, 5)
            second_done.set()
            await asyncio.gather(*holders)
            await a.aclose()
            await b.aclose()
            return early, during, await a.statistics()

    early, during, after = run(main())
    assert not early
    assert during.borrowed_tokens == 2
    assert after == LimiterStatistics(2, 0, 0)


def test_rate_limiter_spreads_starts_across_clients(impl, run, redis_server):
    _, RedisRateLimiter = impl.redis
    name = unique_name()
    interval = 0.05

    async def main():
        async with clients(redis_server, 2) as made:
            limiters = [RedisRateLimiter(client, name, 1 / interval)
                        for client in made]
            starts = []

            async def start(limiter):
                await limiter.acquire()
                starts.append(time.monotonic())

            await asyncio.gather(*[start(limiters[i % 2])
                                   for i in range(12)])
            for limiter in limiters:
                await limiter.aclose()
            return sorted(starts), limiters[0].statistics(), \
                all(map(nothing_left, limiters))

    starts, stats, clean = run(main())
    assert_spread(starts, interval)
    assert stats.waiting == 0 and clean


def assert_spread(starts, interval):
    """No more starts in any stretch of time than the rate allows, counting
    one start's worth of slack for a wake-up that came late (a late start
    bunches up with the next one, whatever the limiter did); and no start
    held back much longer than the rate needs."""
    for i in range(len(starts)):
        for j in range(i + 1, len(starts)):
            assert starts[j] - starts[i] >= (j - i - 1) * interval, \
                (i, j, starts)
    assert starts[-1] - starts[0] <= (len(starts) - 1) * interval + 1.0


def test_aclose_sends_what_is_due_and_fails_the_waiters(
        impl, run, redis_server):
    RedisLimiter, _ = impl.redis

    async def main():
        async with two_processes(RedisLimiter, redis_server, 1) as (a, b):
            await a.acquire()
            stuck = asyncio.create_task(b.acquire())
            await until(lambda: _at_least(waiting(a), 1))
            await b.aclose()
            with pytest.raises(RuntimeError, match="was closed"):
                await stuck
            a.release()
            await a.aclose()        # the release is sent before it returns
            after = await a.statistics()
            async with b:           # usable again
                again = b.held_tokens
            await b.aclose()
            return after, again, await b.statistics()

    assert run(main()) == (LimiterStatistics(1, 0, 0), 1,
                           LimiterStatistics(1, 0, 0))


def test_a_flood_of_waiting_children_is_served_in_order(
        impl, run, redis_server):
    """create_task() children all wait at once: the line holds them all in
    Redis, and they start in the order they were created."""
    RedisLimiter, _ = impl.redis

    async def main():
        async with clients(redis_server) as (client,):
            shared = RedisLimiter(client, unique_name(), 5, lease=5)
            gauge, order = Gauge(), []

            async def work(i):
                order.append(i)
                await gauge.item(delay=0.001)

            async with impl.BoundedTaskGroup(limiter=shared) as tg:
                for i in range(300):
                    tg.create_task(work(i))
                await asyncio.sleep(0.05)
                during = await shared.statistics()
            await shared.aclose()
            return (gauge.peak, order, during.total_tokens,
                    during.borrowed_tokens + during.waiting,
                    await shared.statistics(), nothing_left(shared))

    peak, order, total, in_play, after, clean = run(main())
    assert peak == 5 and order == list(range(300)) and clean
    assert total == 5 and 0 < in_play <= 300
    assert after == LimiterStatistics(5, 0, 0)


def test_a_second_event_loop_is_refused(impl, run, redis_server):
    RedisLimiter, _ = impl.redis
    client = aioredis.Redis(port=redis_server.port)
    shared = RedisLimiter(client, unique_name(), 1)

    async def first():
        async with shared:
            pass
        await shared.aclose()
        await client.aclose()       # its connections belong to this loop

    async def second():
        async with shared:          # refused before it reaches the client
            pass

    run(first())
    with pytest.raises(RuntimeError, match="bound to a different event loop"):
        run(second())
    assert shared.held_tokens == 0
