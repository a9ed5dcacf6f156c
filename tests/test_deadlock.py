"""Deadlock detection: when every token of a limiter is held by tasks that
wait for a token of that same limiter (in spawn(), acquire(), or in a
group's exit for children that wait for it), those waits fail with
taskbound.DeadlockError naming the limiter instead of hanging. The layout
is the one from the discussion that asked for this library: a limiter of 4,
ten intermediate tasks that each hold a token and start sub-tasks on the
same limiter. A wait that is only slow is never called a deadlock."""

from __future__ import annotations

import asyncio
import random

import pytest

from taskbound import DeadlockError

TOKENS = 4
INTERMEDIATES = 10


async def sub():
    await asyncio.sleep(0)
    return "sub"


def leaves(error):
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from leaves(inner)
    else:
        yield error


def assert_deadlocks_named(error, limiter):
    found = list(leaves(error))
    assert found and all(isinstance(e, DeadlockError) for e in found), found
    assert all(repr(limiter).split(" borrowed")[0] in str(e) for e in found)


@pytest.mark.parametrize("start", ["spawn", "create_task"])
def test_intermediates_starting_sub_tasks_on_the_limiter_they_hold(
        impl, run, eager, start):
    """With spawn() each intermediate waits for a token in its own spawn;
    with create_task() it waits in its group's exit for sub-tasks that all
    wait for one."""
    async def main():
        limiter = impl.Limiter(TOKENS)

        async def intermediate():
            # (So that, eager or not, all four start before any sub-task.)
            await asyncio.sleep(0)
            async with impl.BoundedTaskGroup(limiter=limiter) as inner:
                for _ in range(3):
                    if start == "spawn":
                        await inner.spawn(sub())
                    else:
                        inner.create_task(sub())

        async with asyncio.timeout(10):
            with pytest.raises(ExceptionGroup) as caught:
                async with impl.BoundedTaskGroup(limiter=limiter) as outer:
                    for _ in range(INTERMEDIATES):
                        await outer.spawn(intermediate())
        assert_deadlocks_named(caught.value, limiter)
        assert limiter.borrowed_tokens == 0

    run(main(), eager=eager)


def test_nested_acquire_fails_and_a_bystander_goes_on(impl, run):
    """Holders that wait for the limiter in `async with` fail; a task that
    waits without holding a token is not part of the deadlock and gets a
    token once the failed ones give theirs back."""
    async def main():
        limiter = impl.Limiter(TOKENS)
        holding = asyncio.Event()
        held = 0

        async def holder():
            nonlocal held
            async with limiter:
                held += 1
                if held == TOKENS:
                    holding.set()
                await holding.wait()
                async with limiter:
                    return "never"

        async def bystander():
            await holding.wait()
            async with limiter:
                return "bystander"

        async with asyncio.timeout(10):
            results = await asyncio.gather(
                *(holder() for _ in range(TOKENS)), bystander(),
                return_exceptions=True)
        assert all(isinstance(r, DeadlockError) for r in results[:TOKENS])
        assert "Limiter total_tokens=4" in str(results[0])
        assert results[TOKENS] == "bystander"
        assert limiter.borrowed_tokens == 0

    run(main())


def test_no_deadlock_while_a_holder_is_busy(impl, run, eager):
    """Holders wait for the limiter they hold, but one holder is only
    sleeping: it will give its token back, so nothing fails."""
    async def main():
        limiter = impl.Limiter(2)

        async def nested():
            async with impl.BoundedTaskGroup(limiter=limiter) as inner:
                await inner.spawn(sub())
            return "nested"

        async def sleeper():
            await asyncio.sleep(0.05)
            return "slept"

        async with asyncio.timeout(10):
            async with impl.BoundedTaskGroup(limiter=limiter) as outer:
                first = await outer.spawn(nested())
                second = await outer.spawn(sleeper())
        assert (first.result(), second.result()) == ("nested", "slept")
        assert limiter.borrowed_tokens == 0

    run(main(), eager=eager)


def test_nested_use_with_tokens_to_spare_is_not_a_deadlock(impl, run, eager):
    async def main():
        limiter = impl.Limiter(TOKENS)

        async def intermediate():
            async with impl.BoundedTaskGroup(limiter=limiter) as inner:
                for _ in range(5):
                    await inner.spawn(sub())
            return "done"

        async with impl.BoundedTaskGroup(limiter=limiter) as outer:
            tasks = [await outer.spawn(intermediate()) for _ in range(2)]
        assert [t.result() for t in tasks] == ["done", "done"]
        assert limiter.borrowed_tokens == 0

    run(main(), eager=eager)


def test_a_deadlock_across_two_limiters_fails_cleanly(impl, run):
    """The body holds B; an inner group on A and B waits for B in its
    exit, while an outer group's child waits for A, held by the inner
    group's child. The detector's failure of the waits must come out as a
    DeadlockError (before the fix, the C core entered Python with the
    error still set: SystemError on 3.12+, a crash on 3.11)."""
    async def w():
        await asyncio.sleep(0.01)

    async def main():
        a, b = impl.Limiter(1), impl.Limiter(1)
        await b.acquire()
        try:
            async with asyncio.timeout(10):
                with pytest.raises(ExceptionGroup) as caught:
                    async with impl.BoundedTaskGroup(limiter=a) as outer:
                        async with impl.BoundedTaskGroup(
                                limiter=[a, b]) as inner:
                            inner.create_task(w())
                            outer.create_task(w())
        finally:
            b.release()
        assert_deadlocks_named(caught.value, b)
        return a.borrowed_tokens, b.borrowed_tokens

    assert run(main()) == (0, 0)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_holders_are_counted_per_task_through_any_order(impl, run, seed):
    """Sixty tasks take and give back tokens with acquire_nowait() and
    release() in a shuffled order, each keeping at least one, until the
    limiter is full; then each waits for one more. Only an exact count of
    every task's tokens (through the table's growth and deletions) lets
    the detector see that all of them are stuck: each gets DeadlockError,
    none hangs. The total is lowered to what they keep before the wait."""
    rng = random.Random(seed)
    tasks = 60
    takes = [rng.randint(1, 4) for _ in range(tasks)]
    gives = [rng.randint(0, n - 1) for n in takes]
    # Each task's own order never gives back more than it holds (a task
    # that releases what it never took makes detection stand down, by
    # design); the tasks' orders are interleaved at random.
    orders = []
    for i in range(tasks):
        order, held, left = [], 0, {"take": takes[i], "give": gives[i]}
        while left["take"] or left["give"]:
            give = left["give"] and held and (not left["take"]
                                              or rng.random() < 0.5)
            action = "give" if give else "take"
            left[action] -= 1
            held += 1 if action == "take" else -1
            order.append((i, action))
        orders.append(order)
    actions = []
    while any(orders):
        order = rng.choice([order for order in orders if order])
        actions.append(order.pop(0))

    async def main():
        limiter = impl.Limiter(sum(takes))
        inboxes = [asyncio.Queue() for _ in range(tasks)]

        async def holder(i):
            while (action := await inboxes[i].get()) != "wait":
                if action == "take":
                    limiter.acquire_nowait()
                else:
                    limiter.release()
                inboxes[i].task_done()
            inboxes[i].task_done()
            try:
                async with limiter:
                    return "never"
            finally:
                for _ in range(takes[i] - gives[i]):
                    limiter.release()

        workers = [asyncio.create_task(holder(i)) for i in range(tasks)]
        async with asyncio.timeout(10):
            for i, action in actions:
                inboxes[i].put_nowait(action)
                await inboxes[i].join()
        limiter.total_tokens = sum(takes) - sum(gives)
        assert limiter.borrowed_tokens == limiter.total_tokens
        for inbox in inboxes:
            inbox.put_nowait("wait")
        async with asyncio.timeout(10):
            results = await asyncio.gather(*workers, return_exceptions=True)
        assert all(isinstance(r, DeadlockError) for r in results), results
        assert limiter.borrowed_tokens == 0

    run(main())
