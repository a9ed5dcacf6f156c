"""Limiter: FIFO hand-off, cancellation, run-time totals, loop binding."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import weakref

import pytest

from helpers import in_use_on_another_loop
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

    assert run(main()) == (1, (1, 1, 0, None), False)


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
    assert blocked == ([], (0, 0, 3, None))
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

    assert run(main()) == ((0, 0, 0, None), True)


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

    assert run(main()) == [False, True, (2, 2, 0, None), (1, 1)]


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

    assert run(main()) == (1, 0, 0, None)


def test_an_idle_limiter_serves_one_loop_after_another(impl, run):
    """A module-level limiter used by one asyncio.run() after another (or a
    test suite's loop per test): idle, it moves to the loop that uses it,
    whatever took its tokens there, and works there as on its first."""
    limiter = impl.Limiter(2)

    async def use(round_):
        await limiter.acquire()
        limiter.release()
        async with limiter:
            limiter.acquire_nowait()
            limiter.release()
        async with impl.BoundedTaskGroup(limiter=limiter) as tg:
            children = [await tg.spawn(asyncio.sleep(0, i)) for i in range(5)]
        found = [r async for r in impl.amap(lambda i: asyncio.sleep(0, i),
                                            range(4), limiter=limiter)]
        order = []
        await limiter.acquire()
        await limiter.acquire()
        tasks = await queue_up(limiter, order, "abc")
        for _ in range(5):
            limiter.release()
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        return (round_, [c.result() for c in children], found,
                "".join(order), tuple(limiter.statistics()))

    for round_ in range(3):
        assert run(use(round_)) == (round_, [0, 1, 2, 3, 4], [0, 1, 2, 3],
                                    "abc", (2, 0, 0, None))


@pytest.mark.parametrize("waiting", [False, True], ids=["held", "waiting"])
def test_a_limiter_in_use_on_a_live_loop_is_refused(impl, run, waiting):
    """Held (or waited for) on another loop that is still open, a limiter
    stays there: every way of taking it says so and changes nothing, and
    it moves once that loop has it back."""
    limiter = impl.Limiter(1)

    async def use():
        refused = []
        with pytest.raises(RuntimeError) as caught:
            await limiter.acquire()
        refused.append(str(caught.value))
        with pytest.raises(RuntimeError):
            limiter.acquire_nowait()
        with pytest.raises(RuntimeError):
            async with limiter:
                pass
        async with impl.BoundedTaskGroup(limiter=limiter) as tg:
            coro = asyncio.sleep(0)
            with pytest.raises(RuntimeError):
                await tg.spawn(coro)
            refused.append(coro.cr_frame is None)
        with pytest.raises(RuntimeError):
            await impl.gather(asyncio.sleep(0), limiter=limiter)
        return refused, limiter.borrowed_tokens

    with in_use_on_another_loop(limiter, waiting=waiting):
        (message, closed), borrowed = run(use())
        assert closed and borrowed == 1
        assert "different event loop" in message
        assert "tokens held there: 1" in message
        assert f"tasks waiting there: {int(waiting)}" in message
        assert "give its tokens back" in message
    assert limiter.borrowed_tokens == 0

    async def use_again():
        async with limiter:
            return limiter.borrowed_tokens

    assert run(use_again()) == 1


def test_tokens_held_on_a_closed_loop_stay_counted(impl, run):
    """A loop closed while its task still held a token cannot keep the
    limiter (nothing there can run again), but that token is not handed out
    twice: it stays borrowed until it is given back."""
    limiter = impl.Limiter(2)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(limiter.acquire())
    loop.close()

    async def use():
        async with limiter:
            return limiter.available_tokens, limiter.locked()

    assert run(use()) == (0, True)
    limiter.release()
    assert limiter.statistics() == (2, 0, 0, None)


def test_repr_and_attributes(impl):
    limiter = impl.Limiter(3)
    assert "total_tokens=3" in repr(limiter)
    assert (limiter.total_tokens, limiter.borrowed_tokens,
            limiter.available_tokens) == (3, 0, 3)
    limiter.total_tokens = 7
    assert limiter.statistics() == (7, 0, 0, None)
    assert limiter.statistics().total_tokens == 7
