"""Limiter: FIFO hand-off, cancellation, run-time totals, loop binding."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import weakref

import pytest

from taskbound import WouldBlock


async def queue_up(limiter, order, tags):
    """Start one acquirer per tag; each records its tag once it has a token."""
    async def acquirer(tag):
        await limiter.acquire()
        order.append(tag)

    tasks = [asyncio.create_task(acquirer(tag)) for tag in tags]
    await asyncio.sleep(0)
    return tasks


def test_waiters_are_served_in_arrival_order(impl, run):
    async def main():
        limiter = impl.Limiter(1)
        await limiter.acquire()
        order = []
        tasks = await queue_up(limiter, order, "abcde")
        for _ in "abcde":
            limiter.release()
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        limiter.release()
        return "".join(order)

    assert run(main()) == "abcde"


def test_release_hands_the_token_to_the_first_waiter(impl, run):
    async def main():
        limiter = impl.Limiter(1)
        await limiter.acquire()
        order = []
        tasks = await queue_up(limiter, order, "w")
        limiter.release()
        # The token now belongs to the waiter: nobody can take it back.
        handed = (limiter.borrowed_tokens, limiter.locked())
        with pytest.raises(WouldBlock):
            limiter.acquire_nowait()
        barger = asyncio.create_task(limiter.acquire())
        await asyncio.sleep(0)
        first = list(order)
        limiter.release()    # the waiter's token
        await barger
        limiter.release()
        await asyncio.gather(*tasks)
        return handed, first

    assert run(main()) == ((1, True), ["w"])


def test_waiter_cancelled_after_hand_off_passes_the_token_on(impl, run):
    async def main():
        limiter = impl.Limiter(1)
        await limiter.acquire()
        order = []
        first, second = await queue_up(limiter, order, "ab")
        limiter.release()          # handed to "a"...
        first.cancel()             # ...which is cancelled before it runs
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        state = (first.cancelled(), order, limiter.borrowed_tokens)
        await second
        limiter.release()
        return state

    assert run(main()) == (True, ["b"], 1)


def test_cancelled_waiter_leaves_nothing_behind(impl, run):
    async def main():
        limiter = impl.Limiter(1)
        await limiter.acquire()
        waiter = asyncio.create_task(limiter.acquire())
        await asyncio.sleep(0)
        waiting = limiter.statistics().waiting
        waiter.cancel()
        await asyncio.sleep(0)
        after = limiter.statistics()
        limiter.release()
        return waiting, after, limiter.locked()

    assert run(main()) == (1, (1, 1, 0), False)


def test_raising_total_wakes_waiters_at_once(impl, run):
    async def main():
        limiter = impl.Limiter(0)
        order = []
        tasks = await queue_up(limiter, order, "abc")
        blocked = (order[:], limiter.statistics())
        limiter.total_tokens = 2
        await asyncio.sleep(0)
        two = order[:]
        limiter.total_tokens = math.inf
        await asyncio.gather(*tasks)
        for _ in range(3):
            limiter.release()
        return blocked, two, order, limiter.available_tokens

    blocked, two, order, available = run(main())
    assert blocked == ([], (0, 0, 3))
    assert two == ["a", "b"]
    assert order == ["a", "b", "c"]
    assert available == math.inf


def test_lowering_total_lets_holders_finish(impl, run):
    async def main():
        limiter = impl.Limiter(3)
        for _ in range(3):
            await limiter.acquire()
        limiter.total_tokens = 1
        over = (limiter.borrowed_tokens, limiter.available_tokens,
                limiter.locked())
        waiter = asyncio.create_task(limiter.acquire())
        limiter.release()
        limiter.release()
        await asyncio.sleep(0)
        still_waiting = not waiter.done()
        limiter.release()
        await waiter
        limiter.release()
        return over, still_waiting

    assert run(main()) == ((3, 0, True), True)


def test_zero_blocks_everyone(impl, run):
    async def main():
        limiter = impl.Limiter(0)
        with pytest.raises(WouldBlock):
            limiter.acquire_nowait()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(limiter.acquire(), 0.01)
        return limiter.statistics(), limiter.locked()

    assert run(main()) == ((0, 0, 0), True)


def test_acquire_nowait_locked_statistics(impl, run):
    async def main():
        limiter = impl.Limiter(2)
        states = [limiter.locked()]
        limiter.acquire_nowait()
        limiter.acquire_nowait()
        states.append(limiter.locked())
        with pytest.raises(WouldBlock):
            limiter.acquire_nowait()
        states.append(limiter.statistics())
        limiter.release()
        states.append((limiter.available_tokens, limiter.borrowed_tokens))
        limiter.release()
        return states

    assert run(main()) == [False, True, (2, 2, 0), (1, 1)]


def test_async_with(impl, run):
    async def main():
        limiter = impl.Limiter(1)
        async with limiter:
            inside = limiter.borrowed_tokens
        return inside, limiter.borrowed_tokens

    assert run(main()) == (1, 0)


def test_context_methods_read_on_the_class_or_overridden(impl, run):
    """AsyncExitStack calls type(cm).__aenter__(cm); a subclass may override
    both; a limiter entered so is still freed once dropped."""
    class Counted(impl.LimiterType):
        entered = 0

        async def __aenter__(self):
            Counted.entered += 1
            return await super().__aenter__()

    async def main():
        # Not recorded by the fixture, which would keep it alive.
        limiter, counted = impl.LimiterType(2), Counted(1)
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(limiter)
            await stack.enter_async_context(counted)
            inside = (limiter.borrowed_tokens, counted.borrowed_tokens)
        await type(limiter).__aenter__(limiter)
        held = limiter.borrowed_tokens
        await type(limiter).__aexit__(limiter, None, None, None)
        async with limiter:
            pass
        after = (limiter.borrowed_tokens, counted.borrowed_tokens)
        return inside, held, after, weakref.ref(limiter)

    inside, held, after, freed = run(main())
    gc.collect()
    assert (inside, held, after) == ((1, 1), 1, (0, 0))
    assert Counted.entered == 1 and freed() is None


def test_release_without_borrow_raises(impl, run):
    async def main():
        limiter = impl.Limiter(1)
        with pytest.raises(RuntimeError):
            limiter.release()
        return limiter.statistics()

    assert run(main()) == (1, 0, 0)


def test_second_event_loop_is_refused(impl, run):
    limiter = impl.Limiter(5)

    async def use():
        await limiter.acquire()
        limiter.release()

    run(use())
    with pytest.raises(RuntimeError, match="different event loop"):
        run(use())

    async def nowait():
        limiter.acquire_nowait()

    with pytest.raises(RuntimeError, match="different event loop"):
        run(nowait())
    assert limiter.borrowed_tokens == 0


def test_group_on_a_second_loop_is_refused(impl, run):
    limiter = impl.Limiter(5)

    async def use():
        async with impl.BoundedTaskGroup(limiter=limiter) as tg:
            coro = asyncio.sleep(0)
            try:
                await tg.spawn(coro)
            except RuntimeError as err:
                return str(err), coro.cr_frame is None
        return "spawned", None

    assert run(use()) == ("spawned", None)
    message, closed = run(use())
    assert "different event loop" in message and closed
    assert limiter.borrowed_tokens == 0


def test_repr_and_attributes(impl):
    limiter = impl.Limiter(3)
    assert "total_tokens=3" in repr(limiter)
    assert (limiter.total_tokens, limiter.borrowed_tokens,
            limiter.available_tokens) == (3, 0, 3)
    limiter.total_tokens = 7
    assert limiter.statistics() == (7, 0, 0)
    assert limiter.statistics().total_tokens == 7
