"""RateLimiter: starts spread at the configured rate, with the configured
burst; FIFO; composes with Limiter in groups. Times are exact on asyncio
(virtual clock) and checked with slack for lateness on uvloop (real time)."""

from __future__ import annotations

import asyncio
import collections
import math
import time

import pytest

from taskbound import WouldBlock


def slack(run) -> float:
    return 0.0 if run.loop_kind == "virtual" else 0.05


def assert_schedule(run, starts, expected):
    """No start earlier than planned; none much later on a real clock."""
    eps = 1e-9
    assert len(starts) == len(expected)
    for got, want in zip(starts, expected):
        assert got >= want - eps - (0 if run.loop_kind == "virtual" else 0.002)
        assert got <= want + eps + slack(run) * (1 + want * 2), (starts, expected)


def test_starts_are_spread_with_a_burst(impl, timed_run):
    async def main():
        loop = asyncio.get_running_loop()
        limiter = impl.RateLimiter(10, per=1.0, burst=3)
        t0 = loop.time()
        starts = []

        async def one():
            await limiter.acquire()
            starts.append(loop.time() - t0)

        await asyncio.gather(*(one() for _ in range(8)))
        return starts

    starts = timed_run(main())
    assert_schedule(timed_run, starts, [0, 0, 0, 0.1, 0.2, 0.3, 0.4, 0.5])


def test_waiters_start_in_arrival_order(impl, timed_run):
    async def main():
        limiter = impl.RateLimiter(50)
        order = []

        async def one(tag):
            await limiter.acquire()
            order.append(tag)

        await asyncio.gather(*(one(tag) for tag in "abcdef"))
        return "".join(order)

    assert timed_run(main()) == "abcdef"


def test_cancelled_waiter_leaves_nothing_behind(impl, timed_run):
    async def main():
        loop = asyncio.get_running_loop()
        limiter = impl.RateLimiter(10)
        t0 = loop.time()
        await limiter.acquire()                         # t = 0
        doomed = asyncio.create_task(limiter.acquire())  # would start at 0.1
        later = asyncio.create_task(limiter.acquire())   # would start at 0.2
        await asyncio.sleep(0.05)
        waiting = limiter.statistics().waiting
        doomed.cancel()
        await later
        return waiting, loop.time() - t0, limiter.statistics().waiting

    waiting, started, after = timed_run(main())
    assert waiting == 2 and after == 0
    assert_schedule(timed_run, [started], [0.1])   # took the freed slot


def test_raising_the_rate_speeds_up_waiters(impl, timed_run):
    async def main():
        loop = asyncio.get_running_loop()
        limiter = impl.RateLimiter(1)                   # one per second
        t0 = loop.time()
        await limiter.acquire()
        waiter = asyncio.create_task(limiter.acquire())
        await asyncio.sleep(0)
        limiter.rate = 10                                # now 0.1 s apart
        await waiter
        return loop.time() - t0, limiter.rate

    started, rate = timed_run(main())
    assert rate == 10.0
    assert_schedule(timed_run, [started], [0.1])


RATE = 2_000          # 0.5 ms apart: finer than a loop's timers


def test_a_rate_finer_than_the_loops_timers_is_achieved(impl, coarse_run):
    """The loop wakes a timer up to a millisecond late (asyncio rounds its
    waits up to one, uvloop counts in them): the waiters it wakes start on
    the schedule, so 2,000 a second means 2,000 a second, and no window
    gets more than its share plus the few that came due while it was late
    (TIMER_LATENESS worth)."""
    from taskbound._common import TIMER_LATENESS

    async def main():
        loop = asyncio.get_running_loop()
        limiter = impl.RateLimiter(RATE)
        t0 = loop.time()
        end = t0 + 1.0
        starts = []

        async def worker():
            while True:
                await limiter.acquire()
                now = loop.time()
                if now >= end:
                    return
                starts.append(now - t0)

        await asyncio.gather(*(worker() for _ in range(20)))
        return starts

    starts = coarse_run(main())
    caught_up = 1 + math.ceil(TIMER_LATENESS * RATE)
    # Before the waiters started on the schedule: 680 a second.
    least = RATE - 2 if coarse_run.loop_kind == "virtual-ms" else 0.75 * RATE
    assert least <= len(starts) <= RATE + caught_up
    for tenth in range(10):
        window = [t for t in starts if tenth / 10 <= t < (tenth + 1) / 10]
        assert len(window) <= RATE / 10 + caught_up, tenth
    if coarse_run.loop_kind == "virtual-ms":    # exact times: two a wake
        assert max(collections.Counter(starts).values()) == 2


def test_a_stalled_loop_lets_no_flood_of_missed_starts_through(
        impl, timed_run):
    """A stall far longer than a late timer (the loop blocked for 0.3 s)
    restarts the schedule: one start, not the thirty it missed."""
    async def main():
        loop = asyncio.get_running_loop()
        limiter = impl.RateLimiter(100, burst=1)        # 10 ms apart
        await limiter.acquire()
        starts = []

        async def one():
            await limiter.acquire()
            starts.append(loop.time())

        waiters = [asyncio.create_task(one()) for _ in range(5)]
        await asyncio.sleep(0)
        if timed_run.loop_kind == "virtual":
            loop._virtual.now += 0.3
        else:
            time.sleep(0.3)
        await asyncio.gather(*waiters)
        return starts

    starts = timed_run(main())
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    # On a real clock a start after a late timer counts from when it was
    # due, so the next one may follow sooner by that lateness; a flood
    # would be gaps of nothing.
    from taskbound._common import TIMER_LATENESS
    slack = 1e-9 if timed_run.loop_kind == "virtual" \
        else TIMER_LATENESS + 0.001
    assert min(gaps) >= 0.01 - slack, gaps


def test_with_a_limiter_in_a_group_both_bounds_hold(impl, timed_run):
    async def main():
        loop = asyncio.get_running_loop()
        rate = impl.RateLimiter(20)                     # 0.05 s apart
        slots = impl.Limiter(2)
        t0 = loop.time()
        starts, running, peak = [], [0], [0]

        async def item():
            starts.append(loop.time() - t0)
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            await asyncio.sleep(0.2)
            running[0] -= 1

        async with impl.BoundedTaskGroup(limiter=[slots, rate]) as tg:
            for _ in range(6):
                await tg.spawn(item())
        return starts, peak[0]

    starts, peak = timed_run(main())
    assert peak == 2
    # Two at once (rate-spread 0.05 apart), then each waits for a slot.
    assert_schedule(timed_run, starts, [0, 0.05, 0.2, 0.25, 0.4, 0.45])


def test_nowait_locked_release_and_statistics(impl, timed_run):
    async def main():
        limiter = impl.RateLimiter(5, per=2.0, burst=2)
        states = [limiter.locked()]
        limiter.acquire_nowait()
        limiter.acquire_nowait()
        states.append(limiter.locked())
        with pytest.raises(WouldBlock):
            limiter.acquire_nowait()
        limiter.release()           # nothing to give back
        states.append(limiter.locked())
        states.append(tuple(limiter.statistics()))
        await asyncio.sleep(0.4)     # 2 s / 5 = 0.4 s per start
        states.append(limiter.locked())
        async with limiter:
            pass
        return states

    assert timed_run(main()) == [False, True, True, (5.0, 2.0, 2, 0, None),
                                False]


def test_an_idle_rate_limiter_moves_and_keeps_its_schedule(impl, run):
    """Idle (nobody waiting), a RateLimiter moves to the next loop that uses
    it, and its schedule goes along: a start made on one loop still counts
    against the rate on the next, so two asyncio.run() calls in a row
    cannot get more than the rate between them."""
    limiter = impl.RateLimiter(1, per=3600, burst=2)

    async def use():
        started = 0
        for _ in range(3):
            try:
                limiter.acquire_nowait()
            except WouldBlock:
                break
            started += 1
        return started

    assert run(use()) == 2      # its burst
    assert run(use()) == 0      # its next start is an hour away
    assert limiter.statistics().waiting == 0


def test_a_rate_limiter_waited_for_on_a_live_loop_is_refused(impl, run):
    """With a task waiting on another loop that is still open, a
    RateLimiter stays there; it moves once that wait is over."""
    limiter = impl.RateLimiter(1, per=3600)
    loop = asyncio.new_event_loop()

    async def start_and_queue():
        await limiter.acquire()
        waiter = asyncio.ensure_future(limiter.acquire())
        await asyncio.sleep(0)
        return waiter

    async def use():
        limiter.acquire_nowait()

    try:
        waiter = loop.run_until_complete(start_and_queue())
        with pytest.raises(RuntimeError, match=r"different event loop "
                           r"\(tokens held there: 0, tasks waiting there: 1"):
            run(use())
        waiter.cancel()
        loop.run_until_complete(asyncio.gather(waiter, return_exceptions=True))
    finally:
        loop.close()
    with pytest.raises(WouldBlock):     # moved, with its schedule
        run(use())


@pytest.mark.parametrize("field", ["rate", "per"])
@pytest.mark.parametrize("value, error", [
    (0, ValueError), (-1, ValueError), (math.nan, ValueError),
    (math.inf, ValueError), (-math.inf, ValueError), ("1", TypeError),
    (None, TypeError), (True, TypeError),
])
def test_bad_rate_and_per(impl, field, value, error):
    kwargs = {"rate": 1, "per": 1.0, field: value}
    with pytest.raises(error, match=field):
        impl.RateLimiterType(**kwargs)
    if field == "rate":
        limiter = impl.RateLimiterType(3)
        with pytest.raises(error, match="rate"):
            limiter.rate = value
        assert limiter.rate == 3


@pytest.mark.parametrize("burst, error", [
    (0, ValueError), (-2, ValueError), (1.5, TypeError), (True, TypeError),
    ("2", TypeError),
])
def test_bad_burst(impl, burst, error):
    with pytest.raises(error, match="burst"):
        impl.RateLimiterType(1, burst=burst)


def test_rate_limiter_in_group_limiters(impl):
    rate = impl.RateLimiter(5)
    plain = impl.Limiter(1)
    group = impl.GroupType(limiter=(rate, plain))
    assert group.limiters == (rate, plain)     # rank order: creation order
    assert repr(rate) == "<RateLimiter rate=5.0 per=1.0 burst=1 waiting=0>"
    assert repr(impl.RateLimiter(2, per=0.5, burst=3)) == \
        "<RateLimiter rate=2.0 per=0.5 burst=3 waiting=0>"
