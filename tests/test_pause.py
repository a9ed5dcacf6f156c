"""pause(seconds): a server's push-back. No token is granted until then, to
waiters or newcomers; holders keep theirs, waiters keep their places; a
later pause extends it, an earlier one does not shorten it; a RateLimiter
goes on with its spacing from the pause's end. Times are exact on asyncio
(virtual clock) and checked with slack for lateness on uvloop."""

from __future__ import annotations

import asyncio
import math

import pytest

from taskbound import WouldBlock
from test_ratelimiter import assert_schedule
from toysource import toy_source_type


def test_a_pause_holds_back_waiters_and_newcomers_but_not_holders(
        impl, timed_run):
    async def main():
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        limiter = impl.Limiter(2)
        await limiter.acquire()
        limiter.pause(1.0)
        with pytest.raises(WouldBlock):
            limiter.acquire_nowait()
        started = []

        async def waiter():
            await limiter.acquire()
            started.append(loop.time() - t0)
            limiter.release()

        task = asyncio.create_task(waiter())
        await asyncio.sleep(0.5)
        limiter.release()               # back, but not handed on yet
        during = (limiter.borrowed_tokens, limiter.statistics().waiting)
        await task
        return during, started

    during, started = timed_run(main())
    assert during == (0, 1)
    assert_schedule(timed_run, started, [1.0])


def test_waiters_keep_their_places_through_a_pause(impl, timed_run):
    async def main():
        limiter = impl.Limiter(1)
        await limiter.acquire()
        order = []

        async def waiter(tag):
            await limiter.acquire()
            order.append(tag)
            await asyncio.sleep(0)
            limiter.release()

        tasks = [asyncio.create_task(waiter(tag)) for tag in "abcd"]
        await asyncio.sleep(0)
        limiter.pause(0.2)
        limiter.release()
        await asyncio.gather(*tasks)
        return "".join(order)

    assert timed_run(main()) == "abcd"


def test_a_later_pause_extends_it_and_an_earlier_one_does_not_shorten_it(
        impl, timed_run):
    async def main():
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        limiter = impl.Limiter(1)
        limiter.pause(2.0)
        ends = [limiter.statistics().paused_until - t0]
        await asyncio.sleep(0.5)
        # On a real clock the sleep may end late (by much, on a loaded
        # machine): the pauses count from when they are asked for.
        woke = loop.time() - t0
        limiter.pause(0.1)              # ends before 2.0: no change
        ends.append(limiter.statistics().paused_until - t0)
        limiter.pause(1.6)              # ends after 2.0: extended
        ends.append(limiter.statistics().paused_until - t0)
        await limiter.acquire()
        started = loop.time() - t0
        limiter.release()
        return woke, ends, started, limiter.statistics().paused_until

    woke, ends, started, after = timed_run(main())
    assert 0.5 <= woke < 1.9
    # (uvloop's clock counts milliseconds, and a read may move it on by one)
    assert ends == pytest.approx([2.0, 2.0, woke + 1.6], abs=0.01)
    assert_schedule(timed_run, [started], [woke + 1.6])
    assert after is None


def test_a_group_spawns_nothing_during_a_pause(impl, timed_run):
    async def main():
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        api = impl.Limiter(10)
        starts = []

        async def call():
            starts.append(loop.time() - t0)

        api.pause(0.3)
        async with impl.BoundedTaskGroup(limit=2, limiter=api) as tg:
            for _ in range(3):
                await tg.spawn(call())
        return starts

    assert_schedule(timed_run, timed_run(main()), [0.3, 0.3, 0.3])


def test_a_rate_limiter_resumes_its_spacing_after_a_pause(impl, timed_run):
    async def main():
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        limiter = impl.RateLimiter(10)
        starts = []
        for _ in range(2):
            await limiter.acquire()
            starts.append(loop.time() - t0)
        asked = loop.time() - t0        # 0.1, later on a real clock
        limiter.pause(0.5)
        paused = limiter.statistics().paused_until - t0
        for _ in range(3):
            await limiter.acquire()
            starts.append(loop.time() - t0)
        return starts, asked, paused

    starts, asked, paused = timed_run(main())
    assert paused == pytest.approx(asked + 0.5, abs=0.01)   # (as above)
    assert_schedule(timed_run, starts,
                    [0, 0.1, asked + 0.5, asked + 0.6, asked + 0.7])


def test_a_pause_waits_for_the_waiters_of_a_rate_limiter_too(impl, timed_run):
    async def main():
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        limiter = impl.RateLimiter(100, burst=2)
        starts = []

        async def one():
            await limiter.acquire()
            starts.append(loop.time() - t0)

        tasks = [asyncio.create_task(one()) for _ in range(3)]
        await asyncio.sleep(0)          # two start, one waits
        limiter.pause(0.2)
        await asyncio.gather(*tasks)
        return starts

    assert_schedule(timed_run, timed_run(main()), [0, 0, 0.2])


def test_pause_of_zero_changes_nothing(impl, run):
    async def main():
        limiter = impl.Limiter(1)
        limiter.pause(0)
        limiter.acquire_nowait()
        limiter.release()
        return limiter.statistics().paused_until

    assert run(main()) is None


@pytest.mark.parametrize("seconds, error", [
    (-1, ValueError), (math.nan, ValueError), (math.inf, ValueError),
    ("1", TypeError), (None, TypeError), (True, TypeError)], ids=repr)
def test_bad_seconds_are_refused_and_change_nothing(impl, run, seconds,
                                                    error):
    async def main():
        limiters = [impl.Limiter(1), impl.RateLimiter(5)]
        for limiter in limiters:
            with pytest.raises(error, match="seconds"):
                limiter.pause(seconds)
        limiters[0].acquire_nowait()
        limiters[0].release()
        limiters[1].acquire_nowait()
        return [limiter.statistics().paused_until for limiter in limiters]

    assert run(main()) == [None, None]


def test_an_external_source_without_its_own_pause_refuses_one(impl, run):
    """A pause must reach wherever the tokens live: an external source
    whose class does not say how refuses it rather than keep it in this
    process alone."""
    toy = toy_source_type(impl.module.ExternalSource)(1)

    async def main():
        with pytest.raises(NotImplementedError, match="cannot pause"):
            toy.pause(1.0)
        await toy.acquire()
        toy.release()
        return toy.borrowed

    assert run(main()) == 0


def test_a_pause_outlives_the_loop_it_began_on(impl, run):
    """An idle limiter moves to the next loop with its pause, as far ahead
    on the new loop's clock."""
    limiter = impl.Limiter(1)

    async def pause():
        limiter.pause(60.0)

    async def try_now():
        with pytest.raises(WouldBlock):
            limiter.acquire_nowait()
        loop = asyncio.get_running_loop()
        return limiter.statistics().paused_until - loop.time()

    run(pause())
    left = run(try_now())
    assert 59.0 < left <= 60.0
