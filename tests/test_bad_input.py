"""Bad input: a clear error, and nothing changed."""

from __future__ import annotations

import asyncio
import math

import pytest


@pytest.mark.parametrize("limit, error", [
    (-1, ValueError), (0, ValueError), (1.5, TypeError), (True, TypeError),
    ("3", TypeError), (math.inf, TypeError),
])
def test_bad_limit(impl, limit, error):
    with pytest.raises(error, match="limit"):
        impl.GroupType(limit)


@pytest.mark.parametrize("total, error", [
    (-1, ValueError), (1.5, TypeError), (-math.inf, TypeError),
    (math.nan, TypeError), (True, TypeError), ("2", TypeError),
    (None, TypeError),
])
def test_bad_total_tokens(impl, total, error):
    with pytest.raises(error, match="total_tokens"):
        impl.LimiterType(total)
    limiter = impl.LimiterType(4)
    with pytest.raises(error, match="total_tokens"):
        limiter.total_tokens = total
    assert limiter.total_tokens == 4


@pytest.mark.parametrize("limiter", [3, "limiter", object(), [None], (1, 2)])
def test_bad_limiter_argument(impl, limiter):
    with pytest.raises(TypeError, match="Limiter"):
        impl.GroupType(2, limiter=limiter)


def test_limiter_of_the_other_implementation_is_refused(impl):
    import taskbound._pycore as pycore
    other = pycore.Limiter(1) if impl.name == "c" else None
    if other is None:
        from conftest import IMPLEMENTATIONS
        if "c" not in IMPLEMENTATIONS:
            return
        from taskbound._taskbound import Limiter as CLimiter
        other = CLimiter(1)
    with pytest.raises(TypeError, match="Limiter"):
        impl.GroupType(2, limiter=other)


@pytest.mark.parametrize("method", ["spawn", "create_task"])
@pytest.mark.parametrize("bad", [None, 42, "text", lambda: None])
def test_non_awaitable_is_type_error_and_takes_no_token(impl, run, method, bad):
    async def main():
        shared = impl.Limiter(2)
        async with impl.BoundedTaskGroup(limit=3, limiter=shared) as tg:
            with pytest.raises(TypeError, match="awaitable"):
                if method == "spawn":
                    await tg.spawn(bad)
                else:
                    tg.create_task(bad)
            state = ([lim.borrowed_tokens for lim in tg.limiters],
                     tg.statistics())
        return state

    borrowed, stats = run(main())
    assert borrowed == [0, 0]
    assert stats == (0, 0, 0, 0, 0)


@pytest.mark.parametrize("method", ["spawn", "create_task"])
def test_misuse_closes_the_coroutine(impl, run, method):
    """spawn() always closes a coroutine it refuses; create_task() does as
    the running interpreter's TaskGroup does (3.13+ closes it; callers
    written for 3.11 and 3.12 close or await it themselves)."""
    def scenario(make_group):
        async def main():
            async def work():
                return 1

            tg = make_group()
            coro = work()
            with pytest.raises(RuntimeError, match="has not been entered"):
                if method == "spawn":
                    await tg.spawn(coro)
                else:
                    tg.create_task(coro)
            closed = coro.cr_frame is None
            coro.close()
            return closed
        return main()

    expected = True if method == "spawn" else run(scenario(asyncio.TaskGroup))
    assert run(scenario(lambda: impl.BoundedTaskGroup(limit=1))) is expected


def test_spawn_after_exit_is_refused(impl, run):
    async def main():
        async with impl.BoundedTaskGroup(limit=1) as tg:
            pass
        coro = asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="is finished"):
            await tg.spawn(coro)
        return tg.limiters[0].borrowed_tokens

    assert run(main()) == 0


def test_create_task_from_another_loop_is_refused(impl, run):
    async def from_another_loop(tg):
        coro = asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="different event loop"):
            tg.create_task(coro)
        return coro.cr_frame is None

    async def main():
        async with impl.BoundedTaskGroup(limit=1) as tg:
            closed = await asyncio.to_thread(asyncio.run,
                                             from_another_loop(tg))
        return closed, tg.statistics()

    assert run(main()) == (True, (0, 0, 0, 0, 0))
