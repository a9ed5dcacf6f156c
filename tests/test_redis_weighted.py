"""Weighted acquisition and pause() of the Redis limiters, in one process:
limiter objects on separate clients stand for separate processes
(tests/test_redis_processes.py runs real ones)."""

from __future__ import annotations

import asyncio
import time

import pytest

from taskbound import LimiterStatistics

from helpers import unique_name
from test_redis import (_equals, clients, nothing_left, two_processes, until,
                        waiting)


class TokenGauge:
    """Tokens held at once through a limiter, as its holders count them."""

    def __init__(self) -> None:
        self.held = 0
        self.peak = 0

    async def hold(self, tokens: int, seconds: float) -> None:
        self.held += tokens
        self.peak = max(self.peak, self.held)
        try:
            await asyncio.sleep(seconds)
        finally:
            self.held -= tokens


def test_weighted_holders_across_clients_never_exceed_the_total(
        impl, run, redis_server):
    RedisLimiter, _ = impl.redis
    name = unique_name()
    weights = [3, 1, 2, 4, 1, 2, 3, 1, 4, 2, 1, 3]

    async def main():
        async with clients(redis_server, 3) as made:
            limiters = [RedisLimiter(client, name, 6, lease=5)
                        for client in made]
            gauge = TokenGauge()

            async def one_process(i, limiter):
                # A third of the work through the group's cost, a third
                # through hold(n), a third through acquire(n)/release(n).
                async with impl.BoundedTaskGroup() as tg:
                    for k, n in enumerate(weights):
                        work = gauge.hold(n, 0.02)
                        if (i + k) % 3 == 0:
                            await tg.spawn(work, limiter=limiter,
                                           cost={limiter: n})
                        elif (i + k) % 3 == 1:
                            async with limiter.hold(n):
                                await work
                        else:
                            await limiter.acquire(n)
                            try:
                                await work
                            finally:
                                limiter.release(n)

            await asyncio.gather(*[one_process(i, limiter)
                                   for i, limiter in enumerate(limiters)])
            held = [limiter.held_tokens for limiter in limiters]
            for limiter in limiters:
                await limiter.aclose()
            return gauge.peak, held, await limiters[0].statistics(), \
                all(map(nothing_left, limiters))

    peak, held, stats, clean = run(main())
    assert peak == 6            # reached, never exceeded
    assert held == [0, 0, 0]
    assert stats == LimiterStatistics(6, 0, 0) and clean


def test_a_big_request_at_the_head_holds_back_smaller_ones_behind_it(
        impl, run, redis_server):
    """FIFO across processes without starvation: b's request for 3 is at
    the head while one token, then two, are free; a's request for 1,
    behind it, waits for it rather than overtake it."""
    RedisLimiter, _ = impl.redis

    async def main():
        async with two_processes(RedisLimiter, redis_server, 4) as (a, b):
            await a.acquire(2)
            await a.acquire(1)
            served = []

            async def waiter(limiter, n, tag):
                async with limiter.hold(n):
                    served.append(tag)
                    await asyncio.sleep(0.05)

            big = asyncio.create_task(waiter(b, 3, "b3"))
            await until(lambda: _equals(waiting(a), 1))
            small = asyncio.create_task(waiter(a, 1, "a1"))
            await until(lambda: _equals(waiting(a), 2))
            stalled = []
            for n in (1, 2):
                await asyncio.sleep(0.1)     # the free tokens stay free
                stalled.append((list(served), await a.statistics()))
                a.release(n)
            await asyncio.gather(big, small)
            await a.aclose()
            await b.aclose()
            return stalled, sorted(served), await a.statistics()

    stalled, served, stats = run(main())
    assert stalled == [([], LimiterStatistics(4, 3, 2)),
                       ([], LimiterStatistics(4, 2, 2))]
    assert served == ["a1", "b3"]       # once the big one fits, both do
    assert stats == LimiterStatistics(4, 0, 0)


def test_bad_weights_are_refused_with_nothing_taken(impl, run, redis_server):
    RedisLimiter, RedisRateLimiter = impl.redis

    async def main():
        async with clients(redis_server) as (client,):
            limiter = RedisLimiter(client, unique_name(), 3, lease=5)
            rate = RedisRateLimiter(client, unique_name(), 10, burst=2)
            for source, too_many in [(limiter, 4), (rate, 3)]:
                with pytest.raises(ValueError, match="could never be"):
                    await source.acquire(too_many)
                async with impl.BoundedTaskGroup() as tg:
                    with pytest.raises(ValueError, match="could never be"):
                        await tg.spawn(asyncio.sleep(0), limiter=source,
                                       cost={source: too_many})
                for bad, error in [(0, ValueError), (-1, ValueError),
                                   (1.5, TypeError), (True, TypeError)]:
                    with pytest.raises(error):
                        await source.acquire(bad)
            await limiter.acquire(2)
            # A lease goes back whole: 1 of the 2 is refused, nothing given.
            with pytest.raises(RuntimeError, match="given back whole"):
                limiter.release(1)
            held = limiter.held_tokens
            limiter.release(2)
            with pytest.raises(RuntimeError, match="holds no tokens"):
                limiter.release(1)
            await limiter.aclose()
            await rate.aclose()
            return held, await limiter.statistics(), nothing_left(limiter)

    held, stats, clean = run(main())
    assert held == 2
    assert stats == LimiterStatistics(3, 0, 0) and clean


def test_release_of_several_acquisitions_at_once(impl, run, redis_server):
    """release(n) may give back several whole acquisitions together, as a
    Limiter counts tokens, not acquisitions."""
    RedisLimiter, _ = impl.redis

    async def main():
        async with clients(redis_server) as (client,):
            limiter = RedisLimiter(client, unique_name(), 5, lease=5)
            await limiter.acquire(2)
            await limiter.acquire(1)
            await limiter.acquire(2)
            limiter.release(3)
            left = limiter.held_tokens
            limiter.release(2)
            await limiter.aclose()
            return left, await limiter.statistics()

    assert run(main()) == (2, LimiterStatistics(5, 0, 0))


def test_weighted_rate_starts_are_spaced_by_their_units(
        impl, run, redis_server):
    """A start of n units moves the shared schedule n intervals, whichever
    client makes it."""
    _, RedisRateLimiter = impl.redis
    name = unique_name()
    interval = 0.04
    units = [2, 1, 3, 1, 2, 3, 1, 2]

    async def main():
        async with clients(redis_server, 2) as made:
            limiters = [RedisRateLimiter(client, name, 1 / interval, burst=3)
                        for client in made]
            starts = []

            async def start(i, n):
                await asyncio.sleep(i * 0.001)       # arrival order
                await limiters[i % 2].acquire(n)
                starts.append((time.monotonic(), n))

            await asyncio.gather(*[start(i, n) for i, n in enumerate(units)])
            for limiter in limiters:
                await limiter.aclose()
            return sorted(starts), all(map(nothing_left, limiters))

    starts, clean = run(main())
    assert clean
    assert_within_rate(starts, interval, burst=3)
    # They went as fast as the schedule allows: burst, then one unit per
    # interval (with a second of slack for a slow machine).
    total = sum(units)
    assert starts[-1][0] - starts[0][0] <= (total - 3) * interval + 1.0


def assert_within_rate(starts, interval, burst, late=0.02):
    """No stretch of time has more units started than the burst plus one
    per interval, counting one start's units and `late` seconds of slack
    for wake-ups that came late (a late start bunches up with the next
    ones, whatever the limiter did: a process's timer, or a slow
    interpreter's)."""
    biggest = max(n for _, n in starts)
    for i in range(len(starts)):
        units = 0
        for j in range(i, len(starts)):
            units += starts[j][1]
            elapsed = starts[j][0] - starts[i][0]
            assert units <= burst + (elapsed + late) / interval + biggest, \
                (i, j, starts)


def test_a_pause_reaches_waiters_of_every_client(impl, run, redis_server):
    """a's pause holds back b's waiter though tokens are free; holders keep
    theirs; both see when it ends; a shorter pause later does not shorten
    it, a longer one extends it."""
    RedisLimiter, _ = impl.redis

    async def main():
        async with two_processes(RedisLimiter, redis_server, 3) as (a, b):
            loop = asyncio.get_running_loop()
            await a.acquire()
            a.pause(0.3)
            paused_at = loop.time()
            await until(lambda: _paused(a))
            a.pause(0.05)             # does not shorten it
            stats_b = await b.statistics()

            async def waiter():
                async with b.hold(2):
                    return loop.time()

            task = asyncio.create_task(waiter())
            await asyncio.sleep(0.1)
            b.pause(0.4)              # extends it: to 0.5 s from a's pause
            started = await task
            held = a.held_tokens
            a.release()
            await a.aclose()
            await b.aclose()
            return (started - paused_at, stats_b, held,
                    await a.statistics())

    waited, stats_b, held, stats = run(main())
    assert 0.45 <= waited <= 2.0
    # b learns the pause from Redis (its end in b's loop time, about 0.3 s
    # after it began); a's holder kept its token throughout.
    assert stats_b.paused_until is not None
    assert (stats_b.total_tokens, stats_b.borrowed_tokens) == (3, 1)
    assert held == 1
    assert stats == LimiterStatistics(3, 0, 0)


async def _paused(limiter) -> bool:
    return (await limiter.statistics()).paused_until is not None


def test_a_pause_before_any_use_and_an_idle_limiter(impl, run, redis_server):
    """A pause is sent even when nothing else is to be sent, and lapses."""
    RedisLimiter, _ = impl.redis

    async def main():
        async with two_processes(RedisLimiter, redis_server, 2) as (a, b):
            loop = asyncio.get_running_loop()
            b.pause(0.2)
            began = loop.time()
            await until(lambda: _paused(a))
            await a.acquire()
            waited = loop.time() - began
            a.release()
            await a.aclose()
            await b.aclose()
            return waited, await a.statistics(), nothing_left(b)

    waited, stats, clean = run(main())
    assert 0.15 <= waited <= 2.0
    assert stats == LimiterStatistics(2, 0, 0, None) and clean


def test_a_pause_pushes_back_the_starts_reserved_everywhere(
        impl, run, redis_server):
    """Starts a rate limiter reserved ahead (here: 8 at 20/s from a and b)
    move back by the pause's length, wherever they were reserved: none is
    made during the pause, and after it they keep their spacing."""
    _, RedisRateLimiter = impl.redis
    name = unique_name()
    interval = 0.05
    pause = 0.3

    async def main():
        async with clients(redis_server, 2) as made:
            a, b = [RedisRateLimiter(client, name, 1 / interval)
                    for client in made]
            loop = asyncio.get_running_loop()
            starts = []

            async def start(limiter):
                await limiter.acquire()
                starts.append(loop.time())

            await a.acquire()           # the schedule is under way
            tasks = [asyncio.create_task(start(limiter))
                     for limiter in [a, b] * 4]
            # Every start is reserved (each object has its timers) and b
            # listens for pauses before a asks for one.
            while len(a._timers) + len(b._timers) < 8 or b._listener is None:
                await asyncio.sleep(0.001)
            await asyncio.sleep(0.03)
            paused_at = loop.time()
            a.pause(pause)
            await asyncio.gather(*tasks)
            stats = a.statistics()
            for limiter in (a, b):
                await limiter.aclose()
            return paused_at, sorted(starts), stats, \
                nothing_left(a) and nothing_left(b)

    paused_at, starts, stats, clean = run(main())
    assert clean and stats.waiting == 0
    # Nothing started during the pause (a start due just as it was asked
    # for may beat it by the round trip that carries it: 30 ms of slack).
    during = [t for t in starts if paused_at + 0.03 < t < paused_at + pause]
    assert during == [], (paused_at, starts)
    assert_within_rate([(t, 1) for t in starts], interval, burst=1)
