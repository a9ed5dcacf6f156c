"""Weighted acquisition: acquire(n), acquire_nowait(n), release(n) and
hold(n) on Limiter and RateLimiter. FIFO with no starvation: a request at
the head that does not fit holds back smaller ones behind it. Bad n is an
error at the call that takes nothing."""

from __future__ import annotations

import asyncio

import pytest

from taskbound import WouldBlock
from test_ratelimiter import assert_schedule


async def refused(error, *calls) -> list:
    """Each call (an acquire(n), acquire_nowait(n), hold(n)...) raises
    ``error``, at the call or when awaited; their messages."""
    messages = []
    for call in calls:
        with pytest.raises(error) as caught:
            awaitable = call()
            if asyncio.iscoroutine(awaitable):
                await awaitable
        messages.append(str(caught.value))
    return messages


async def start(limiter, n, order, tag):
    """A task that takes n tokens and records its tag once it has them."""
    async def take():
        await limiter.acquire(n)
        order.append(tag)

    task = asyncio.create_task(take())
    await asyncio.sleep(0)
    return task


def test_a_big_request_at_the_head_holds_back_smaller_ones(impl, run):
    async def main():
        limiter = impl.Limiter(5)
        await limiter.acquire(3)
        order = []
        big = await start(limiter, 4, order, "big")
        small = await start(limiter, 1, order, "small")
        # 2 are free: enough for `small`, but `big` is first in line.
        seen = [(list(order), limiter.borrowed_tokens)]
        limiter.release(3)
        await asyncio.gather(big, small)
        seen.append((list(order), limiter.borrowed_tokens))
        limiter.release(4)
        limiter.release()
        return seen

    assert run(main()) == [([], 3), (["big", "small"], 5)]


def test_waiters_are_served_in_arrival_order_whatever_their_size(impl, run):
    async def main():
        limiter = impl.Limiter(4)
        await limiter.acquire(4)
        order = []
        sizes = {"a": 2, "b": 1, "c": 3, "d": 1, "e": 4}
        tasks = [await start(limiter, n, order, tag)
                 for tag, n in sizes.items()]
        seen = []
        limiter.release(4)
        for served in ("", "ab", "cd"):     # give back what was served
            for tag in served:
                limiter.release(sizes[tag])
            await asyncio.sleep(0)
            seen.append(("".join(order), limiter.borrowed_tokens))
        await asyncio.gather(*tasks)
        limiter.release(4)
        return seen

    # a and b fit in 4 and go; c (3) does not fit beside them, and d, which
    # would, waits behind it; then c and d; then e alone.
    assert run(main()) == [("ab", 3), ("abcd", 4), ("abcde", 4)]


def test_a_cancelled_big_waiter_lets_the_ones_behind_it_in(impl, run):
    async def main():
        limiter = impl.Limiter(5)
        await limiter.acquire(3)
        order = []
        big = await start(limiter, 4, order, "big")
        small = await start(limiter, 2, order, "small")
        big.cancel()
        await asyncio.sleep(0)
        await small
        result = (list(order), limiter.borrowed_tokens, big.cancelled())
        limiter.release(3)
        limiter.release(2)
        return result

    assert run(main()) == (["small"], 5, True)


def test_a_big_waiter_cancelled_after_it_was_handed_its_tokens_passes_them_on(
        impl, run):
    async def main():
        limiter = impl.Limiter(4)
        await limiter.acquire(4)
        order = []
        big = await start(limiter, 3, order, "big")
        a = await start(limiter, 2, order, "a")
        b = await start(limiter, 2, order, "b")
        limiter.release(4)          # big gets 3 (a does not fit behind it)
        big.cancel()                # before it runs: its 3 go on, to a
        await asyncio.gather(a, return_exceptions=True)
        await asyncio.sleep(0)
        result = (list(order), limiter.borrowed_tokens, big.cancelled())
        await b
        limiter.release(2)
        limiter.release(2)
        return result

    # big's 3 come back with the 1 left: 4, enough for a and b.
    assert run(main()) == (["a", "b"], 4, True)


def test_acquire_nowait_takes_n_only_when_n_are_free_and_nobody_waits(
        impl, run):
    async def main():
        limiter = impl.Limiter(5)
        limiter.acquire_nowait(3)
        with pytest.raises(WouldBlock):
            limiter.acquire_nowait(3)
        after_refusal = limiter.borrowed_tokens
        limiter.acquire_nowait(2)
        limiter.release(5)
        await limiter.acquire(4)
        waiter = asyncio.create_task(limiter.acquire(2))
        await asyncio.sleep(0)
        with pytest.raises(WouldBlock):     # 1 is free, but 2 wait first
            limiter.acquire_nowait(1)
        limiter.release(4)
        await waiter
        limiter.release(2)
        return after_refusal, limiter.borrowed_tokens

    assert run(main()) == (3, 0)


def test_hold_takes_n_and_gives_them_back_however_the_block_ends(impl, run):
    async def main():
        limiter = impl.Limiter(10)
        inside = []
        async with limiter.hold(7):
            inside.append(limiter.borrowed_tokens)
        with pytest.raises(KeyError):
            async with limiter.hold(4):
                inside.append(limiter.borrowed_tokens)
                raise KeyError("boom")
        return inside, limiter.borrowed_tokens

    assert run(main()) == ([7, 4], 0)


def test_raising_the_total_admits_a_big_waiter(impl, run):
    async def main():
        limiter = impl.Limiter(3)
        await limiter.acquire(2)
        order = []
        big = await start(limiter, 3, order, "big")
        limiter.total_tokens = 5
        await big
        result = (list(order), limiter.borrowed_tokens)
        limiter.release(5)
        return result

    assert run(main()) == (["big"], 5)


def test_release_of_more_than_is_borrowed_is_refused(impl, run):
    async def main():
        limiter = impl.Limiter(5)
        await limiter.acquire(2)
        with pytest.raises(RuntimeError, match="borrowed"):
            limiter.release(3)
        kept = limiter.borrowed_tokens
        limiter.release(2)
        return kept

    assert run(main()) == 2


BAD_COUNTS = [(0, ValueError), (-2, ValueError), (1.0, TypeError),
              (2.5, TypeError), (True, TypeError), ("2", TypeError),
              (None, TypeError)]


@pytest.mark.parametrize("n, error", BAD_COUNTS, ids=repr)
def test_bad_n_is_refused_at_the_call_and_takes_nothing(impl, run, n, error):
    async def main():
        limiter = impl.Limiter(5)
        await limiter.acquire()
        errors = await refused(error, lambda: limiter.acquire(n),
                               lambda: limiter.acquire_nowait(n),
                               lambda: limiter.hold(n))
        with pytest.raises(error):
            limiter.release(n)
        state = (limiter.borrowed_tokens, limiter.statistics().waiting)
        limiter.release()
        return errors, state

    errors, state = run(main())
    assert state == (1, 0)
    assert all("n" in message for message in errors)


def test_more_than_a_finite_total_can_never_be_granted(impl, run):
    async def main():
        limiter = impl.Limiter(5)
        messages = await refused(ValueError, lambda: limiter.acquire(6),
                                 lambda: limiter.acquire_nowait(6),
                                 lambda: limiter.hold(6))
        unbounded = impl.Limiter(float("inf"))
        await unbounded.acquire(10**9)
        unbounded.release(10**9)
        return messages, limiter.borrowed_tokens

    messages, borrowed = run(main())
    assert borrowed == 0
    assert all("n=6 is more than total_tokens=5" in m for m in messages)


def test_a_closed_limiter_makes_every_request_wait(impl, run):
    """A total of 0 closes the limiter; it is not a limit of 0 tokens."""
    async def main():
        limiter = impl.Limiter(0)
        order = []
        task = await start(limiter, 3, order, "three")
        waiting = limiter.statistics().waiting
        limiter.total_tokens = 3
        await task
        limiter.release(3)
        return waiting, order

    assert run(main()) == (1, ["three"])


def test_weighted_rate_starts_move_the_schedule_n_intervals(impl, timed_run):
    async def main():
        loop = asyncio.get_running_loop()
        limiter = impl.RateLimiter(10, per=1.0, burst=4)
        t0 = loop.time()
        starts = []
        for n in (4, 2, 1, 3, 1):
            await limiter.acquire(n)
            starts.append(loop.time() - t0)
        return starts

    # 4 at once spends the burst; then 2 more may start once the schedule,
    # 0.4 s ahead, is within the burst by 2 intervals (0.2), and so on.
    assert_schedule(timed_run, timed_run(main()), [0, 0.2, 0.3, 0.6, 0.7])


def test_weighted_rate_waiters_keep_their_order(impl, timed_run):
    async def main():
        loop = asyncio.get_running_loop()
        limiter = impl.RateLimiter(100, burst=3)
        t0 = loop.time()
        starts = []

        async def one(tag, n):
            await limiter.acquire(n)
            starts.append((tag, round(loop.time() - t0, 3)))

        await asyncio.gather(one("a", 3), one("b", 1), one("c", 3),
                             one("d", 1))
        return starts

    starts = timed_run(main())
    assert [tag for tag, _ in starts] == ["a", "b", "c", "d"]
    if timed_run.loop_kind == "virtual":
        assert starts == [("a", 0), ("b", 0.01), ("c", 0.04), ("d", 0.05)]


def test_a_rate_start_of_more_than_the_burst_is_refused(impl, run):
    async def main():
        limiter = impl.RateLimiter(10, burst=3)
        messages = await refused(ValueError, lambda: limiter.acquire(4),
                                 lambda: limiter.acquire_nowait(4),
                                 lambda: limiter.hold(4))
        limiter.acquire_nowait(3)       # the whole burst, at once
        with pytest.raises(WouldBlock):
            limiter.acquire_nowait(1)
        with pytest.raises(TypeError):
            limiter.release(1.5)
        limiter.release(3)              # a no-op, as ever
        return messages

    assert all("n=4 is more than burst=3" in m for m in run(main()))


def test_a_cancelled_weighted_rate_waiter_leaves_the_schedule_as_it_was(
        impl, timed_run):
    async def main():
        loop = asyncio.get_running_loop()
        limiter = impl.RateLimiter(10, burst=2)
        t0 = loop.time()
        await limiter.acquire(2)
        big = asyncio.create_task(limiter.acquire(2))
        await asyncio.sleep(0)
        big.cancel()
        await asyncio.gather(big, return_exceptions=True)
        await limiter.acquire(1)    # as if `big` had never queued
        return loop.time() - t0

    assert_schedule(timed_run, [timed_run(main())], [0.1])


def test_waiting_for_more_than_the_others_left_is_a_deadlock(impl, run):
    """A task holding 2 of 3 tokens that waits for 2 more can never get
    them: nobody else holds any to give back."""
    from taskbound import DeadlockError

    async def main():
        limiter = impl.Limiter(3)
        await limiter.acquire(2)
        with pytest.raises(DeadlockError):
            await limiter.acquire(2)
        state = (limiter.borrowed_tokens, limiter.statistics().waiting)
        await limiter.acquire(1)        # one still fits
        limiter.release(3)
        return state

    assert run(main()) == (2, 0)
