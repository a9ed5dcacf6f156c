"""Per-task limiters and costs: spawn(coro, limiter=..., cost=...) and
create_task(coro, limiter=..., cost=...) take the task's own limiters with
the group's, in the one rank order, and cost[limiter] tokens of each one the
mapping names (1 of the others). The tokens come back however the task
ends; a bad limiter or cost is an error at the call that closes the
coroutine and takes nothing; the group's statistics and deadlock detection
see a task's own limiters as they see the group's."""

from __future__ import annotations

import asyncio

import pytest

from test_deadlock import assert_deadlocks_named
from toysource import toy_source_type

START = ["spawn", "create_task"]


async def started(group, how, coro, **kwargs):
    """Starts ``coro`` in ``group`` with spawn() (waiting for its tokens)
    or create_task() (at once); its task."""
    if how == "spawn":
        return await group.spawn(coro, **kwargs)
    return group.create_task(coro, **kwargs)


def borrowed(*limiters) -> list:
    return [limiter.borrowed_tokens for limiter in limiters]


@pytest.mark.parametrize("how", START)
def test_a_task_takes_its_own_limiter_and_costs_with_the_groups(
        impl, run, how):
    async def main():
        shared, own = impl.Limiter(10), impl.Limiter(5)
        seen = []
        release = asyncio.Event()

        async with impl.BoundedTaskGroup(limiter=shared) as group:
            await started(group, how, release.wait(), limiter=own,
                          cost={shared: 4, own: 3})
            seen.append(borrowed(shared, own))
            await started(group, how, release.wait())
            seen.append(borrowed(shared, own))
            release.set()
        seen.append(borrowed(shared, own))
        return seen

    # The first task holds 4 of shared and 3 of its own; the second, with
    # neither limiter= nor cost=, 1 of the group's only.
    assert run(main()) == [[4, 3], [5, 3], [0, 0]]


@pytest.mark.parametrize("how", START)
def test_a_task_waits_for_its_own_limiter_and_others_go_past(impl, run, how):
    async def main():
        own = impl.Limiter(2)
        await own.acquire(2)
        order = []

        async def work(tag):
            order.append(tag)

        async with impl.BoundedTaskGroup(limit=5) as group:
            waiting = asyncio.ensure_future(
                started(group, how, work("own"), limiter=own))
            await asyncio.sleep(0)
            await started(group, how, work("plain"))
            await asyncio.sleep(0)
            stats = group.statistics()
            before = (list(order), stats.waiting, stats.running)
            own.release(2)
            await waiting
        return before, order, own.borrowed_tokens

    before, order, left = run(main())
    assert before == (["plain"], 1, 0)
    assert order == ["plain", "own"]
    assert left == 0


@pytest.mark.parametrize("how", START)
def test_a_big_cost_at_the_head_holds_back_smaller_ones(impl, run, how):
    async def main():
        tokens = impl.Limiter(4)
        await tokens.acquire(3)
        order = []
        finish = asyncio.Event()

        async def work(tag):
            order.append(tag)
            await finish.wait()

        async def turns():
            for _ in range(5):
                await asyncio.sleep(0)

        async with impl.BoundedTaskGroup(limiter=tokens) as group:
            pending = []
            for tag, n in (("big", 3), ("small", 1)):
                pending.append(asyncio.ensure_future(started(
                    group, how, work(tag), cost={tokens: n})))
                await asyncio.sleep(0)
            # One token is free: enough for "small", but "big" is first.
            await turns()
            seen = [list(order)]
            tokens.release(2)       # 3 free: for "big" only
            await turns()
            seen.append(list(order))
            tokens.release(1)
            await turns()
            seen.append(list(order))
            finish.set()
            await asyncio.gather(*pending)
        return seen, tokens.borrowed_tokens

    assert run(main()) == ([[], ["big"], ["big", "small"]], 0)


def test_own_limiters_are_taken_in_rank_order_whatever_the_order_given(
        impl, run):
    """Two groups each giving the same two limiters in opposite orders,
    many tasks at once: no deadlock, every token back."""
    async def main():
        first, second = impl.Limiter(1), impl.Limiter(1)
        done = []

        async def work():
            await asyncio.sleep(0)
            done.append(1)

        async def flood(limiters):
            async with impl.BoundedTaskGroup() as group:
                for _ in range(20):
                    await group.spawn(work(), limiter=limiters)

        async with asyncio.timeout(10):
            await asyncio.gather(flood([first, second]),
                                 flood((second, first)))
        return len(done), borrowed(first, second)

    assert run(main()) == (40, [0, 0])


@pytest.mark.parametrize("ending", ["returns", "raises", "cancelled",
                                    "cancelled while waiting",
                                    "group aborts"])
@pytest.mark.parametrize("how", START)
def test_own_tokens_come_back_however_the_task_ends(impl, run, how, ending):
    async def main():
        own = impl.Limiter(3)
        blocker = None
        if ending == "cancelled while waiting":
            await own.acquire(3)
            blocker = 3

        async def work():
            if ending == "raises":
                raise LookupError("boom")
            await asyncio.sleep(0 if ending == "returns" else 10)

        async def body():
            async with impl.BoundedTaskGroup() as group:
                if ending == "cancelled while waiting" and how == "spawn":
                    spawn = asyncio.ensure_future(
                        group.spawn(work(), limiter=own, cost={own: 2}))
                    await asyncio.sleep(0)
                    spawn.cancel()
                    await asyncio.gather(spawn, return_exceptions=True)
                    return
                task = await started(group, how, work(), limiter=own,
                                     cost={own: 2})
                await asyncio.sleep(0)
                if ending.startswith("cancelled"):
                    task.cancel()
                elif ending == "group aborts":
                    raise KeyError("body fails")

        try:
            await body()
        except BaseExceptionGroup as error:
            kinds = {type(e) for e in error.exceptions}
            assert kinds <= {LookupError, KeyError}, error
        if blocker:
            assert own.statistics().waiting == 0
            own.release(blocker)
        return own.borrowed_tokens, own.statistics().waiting

    assert run(main()) == (0, 0)


BAD = [
    ({"limiter": 5}, TypeError, "limiter must be a taskbound limiter"),
    ({"limiter": [None]}, TypeError, "a sequence holding NoneType"),
    ({"cost": [1]}, TypeError, "cost must be a mapping"),
    ({"cost": "own:2"}, TypeError, "cost must be a mapping"),
    ({"cost": {"own": 0}}, ValueError, "n must be >= 1"),
    ({"cost": {"own": 1.5}}, TypeError, "n must be an int"),
    ({"cost": {"own": True}}, TypeError, "n must be an int"),
    ({"cost": {"own": 6}}, ValueError, "more than total_tokens=5"),
    ({"cost": {"stranger": 1}}, ValueError, "which this task does not take"),
    ({"cost": {"rate": 3}}, ValueError, "burst"),
]


@pytest.mark.parametrize("kwargs, error, words", BAD,
                         ids=[str(i) for i in range(len(BAD))])
@pytest.mark.parametrize("how", START)
def test_a_bad_limiter_or_cost_is_an_error_at_the_call_taking_nothing(
        impl, run, how, kwargs, error, words):
    async def main():
        named = {"own": impl.Limiter(5), "stranger": impl.Limiter(5),
                 "rate": impl.RateLimiter(10, 1, burst=2)}
        limiters = [named["own"], named["rate"]]

        def resolve(value):
            if isinstance(value, dict):
                return {named.get(k, k): v for k, v in value.items()}
            return value

        given = {key: resolve(value) for key, value in kwargs.items()}
        given.setdefault("limiter", limiters)
        ran = []

        async def work():
            ran.append(1)

        async with impl.BoundedTaskGroup(limit=2) as group:
            coro = work()
            with pytest.raises(error, match=words):
                getattr(group, how)(coro, **given)
            # Closed, so never "never awaited", and it cannot run.
            with pytest.raises(RuntimeError):
                coro.send(None)
            stats = group.statistics()
        # The whole burst is still there: nothing was started.
        named["rate"].acquire_nowait(2)
        return (ran, stats.spawned, stats.waiting,
                named["own"].borrowed_tokens,
                named["stranger"].borrowed_tokens)

    assert run(main()) == ([], 0, 0, 0, 0)


def test_an_external_source_takes_one_token_of_a_task_only(impl, run):
    async def main():
        source = toy_source_type(impl.module.ExternalSource)(3)
        async with impl.BoundedTaskGroup() as group:
            coro = asyncio.sleep(0)
            with pytest.raises(ValueError, match="one token at a time"):
                group.create_task(coro, limiter=source, cost={source: 2})
            await group.spawn(asyncio.sleep(0), limiter=source,
                              cost={source: 1})
        return source.borrowed

    assert run(main()) == 0


@pytest.mark.parametrize("how", START)
def test_a_deadlock_through_own_weighted_tokens_fails_cleanly(
        impl, run, eager, how):
    """Intermediates hold 2 tokens each of a limiter of 4 given per task and
    start sub-tasks needing it in groups with no limiter of their own: with
    spawn() they wait in it, with create_task() in their group's exit."""
    async def main():
        limiter = impl.Limiter(4)

        async def sub():
            await asyncio.sleep(0)

        async def intermediate():
            await asyncio.sleep(0)
            async with impl.BoundedTaskGroup() as inner:
                for _ in range(3):
                    await started(inner, how, sub(), limiter=limiter)

        async with asyncio.timeout(10):
            with pytest.raises(ExceptionGroup) as caught:
                async with impl.BoundedTaskGroup() as outer:
                    for _ in range(4):
                        await outer.spawn(intermediate(), limiter=limiter,
                                          cost={limiter: 2})
        assert_deadlocks_named(caught.value, limiter)
        return limiter.borrowed_tokens

    assert run(main(), eager=eager) == 0


def intermediates_holding_two_each(impl, count):
    """Run count intermediates that hold 2 each of a Limiter(5) given per
    task, each making 3 sub-tasks that need 1 of it in a group of its own;
    return (the outer group's error or None, tokens still borrowed)."""
    async def main():
        limiter = impl.Limiter(5)

        async def intermediate():
            await asyncio.sleep(0)
            async with impl.BoundedTaskGroup() as inner:
                for _ in range(3):
                    inner.create_task(asyncio.sleep(0.001), limiter=limiter)

        error = None
        async with asyncio.timeout(10):
            try:
                async with impl.BoundedTaskGroup() as outer:
                    for _ in range(count):
                        await outer.spawn(intermediate(), limiter=limiter,
                                          cost={limiter: 2})
            except ExceptionGroup as caught:
                error = caught
        return error, limiter

    return main()


def test_tokens_to_spare_with_own_costs_is_not_a_deadlock(impl, run, eager):
    """Two intermediates hold 2 each of 5: the one token left lets their
    sub-tasks through one at a time."""
    error, limiter = run(intermediates_holding_two_each(impl, 2), eager=eager)
    assert error is None
    assert limiter.borrowed_tokens == 0


def test_a_waiting_big_cost_holding_back_the_subtasks_is_a_deadlock(
        impl, run, eager):
    """A third intermediate's 2 do not fit in the token left, and the
    sub-tasks queue behind it (FIFO), so nothing can move."""
    error, limiter = run(intermediates_holding_two_each(impl, 3), eager=eager)
    assert error is not None
    assert_deadlocks_named(error, limiter)
    assert limiter.borrowed_tokens == 0
