"""Faults from outside: a task factory that raises, create_task() on a
closed loop, a limiter in the sequence that cannot be taken, an error in a
child's first step under eager tasks, a group dropped without exit. Each
gives a clear error, closes what never ran (the `run` fixture fails on a
never-awaited warning) and leaves every limiter's borrowed_tokens right."""

from __future__ import annotations

import asyncio
import gc

import pytest

from helpers import in_use_on_another_loop
from taskbound import _compat


class Boom(Exception):
    pass


async def work(delay: float = 0.0):
    await asyncio.sleep(delay)
    return delay


async def fail_at_once():
    raise Boom("first step")


def raising_factory(error):
    def factory(loop, coro, **kwargs):
        raise error
    return factory


@pytest.mark.parametrize("error", [ValueError("factory broke"),
                                   RuntimeError("Event loop is closed")],
                         ids=["factory-error", "closed-loop"])
def test_task_factory_that_raises(impl, run, error):
    async def main():
        shared = impl.Limiter(2)
        async with impl.BoundedTaskGroup(2, limiter=shared) as tg:
            loop = asyncio.get_running_loop()
            loop.set_task_factory(raising_factory(error))
            try:
                with pytest.raises(type(error), match=str(error)):
                    await tg.spawn(work())
                assert shared.borrowed_tokens == 0
                with pytest.raises(type(error), match=str(error)):
                    tg.create_task(work())
                assert shared.borrowed_tokens == 0
                assert tg.statistics().running == 0
            finally:
                loop.set_task_factory(None)
            # The group still works once the factory does.
            assert await (await tg.spawn(work())) == 0.0
        assert shared.borrowed_tokens == 0

    run(main())


def test_create_task_on_a_closed_loop(impl, run):
    """A loop raises in create_task() once it is closed. A running loop
    cannot close, so asyncio's has its closed flag set for the call alone;
    uvloop's flag cannot be set from Python, so its create_task is made to
    raise what it raises when closed."""

    async def main():
        shared = impl.Limiter(1)
        async with impl.BoundedTaskGroup(limiter=shared) as tg:
            loop = asyncio.get_running_loop()
            if run.loop_kind == "asyncio":
                def close():
                    loop._closed = True

                def reopen():
                    loop._closed = False
            else:
                def close():
                    loop.set_task_factory(raising_factory(
                        RuntimeError("Event loop is closed")))

                def reopen():
                    loop.set_task_factory(None)
            close()
            try:
                with pytest.raises(RuntimeError, match="closed"):
                    await tg.spawn(work())
                with pytest.raises(RuntimeError, match="closed"):
                    tg.create_task(work())
            finally:
                reopen()
            assert shared.borrowed_tokens == 0
            assert await (await tg.spawn(work())) == 0.0
        assert shared.borrowed_tokens == 0

    run(main())


@pytest.mark.parametrize("other_first", [False, True])
def test_a_limiter_in_the_sequence_that_cannot_be_taken(impl, run,
                                                        other_first):
    """A limiter in use on another loop raises when its token is taken: the
    tokens already taken from the others go back."""
    if other_first:
        other = impl.Limiter(3)
        first = impl.Limiter(3)
    else:
        first = impl.Limiter(3)
        other = impl.Limiter(3)

    async def main():
        async with impl.BoundedTaskGroup(limiter=[first, other]) as tg:
            with pytest.raises(RuntimeError, match="different event loop"):
                await tg.spawn(work())
            assert first.borrowed_tokens == 0
            with pytest.raises(RuntimeError, match="different event loop"):
                tg.create_task(work())
            assert first.borrowed_tokens == 0
            assert tg.statistics().spawned == 0
        with pytest.raises(RuntimeError, match="different event loop"):
            async with other:
                pass
        assert first.borrowed_tokens == 0

    with in_use_on_another_loop(other):
        run(main())
        assert other.borrowed_tokens == 1      # the other loop's, still
    assert other.borrowed_tokens == 0


def test_error_in_a_childs_first_step(impl, run, eager):
    """Under eager tasks (3.12+) the first step runs inside create_task()
    and spawn(); the failure aborts the group at once or, from 3.12.9 and
    3.13.2, in a callback, as the interpreter's asyncio.TaskGroup does."""
    async def main():
        shared = impl.Limiter(2)
        with pytest.raises(ExceptionGroup) as caught:
            async with impl.BoundedTaskGroup(2, limiter=shared) as tg:
                slow = tg.create_task(work(10))
                failed = tg.create_task(fail_at_once())
                late = None
                if eager:
                    assert failed.done()
                    coro = work()
                    if _compat.EAGER_DONE_SCHEDULED:
                        # Handled in a callback, as asyncio's (3.12.9+,
                        # 3.13.2+): the group is not aborting yet.
                        late = tg.create_task(coro)
                    else:
                        with pytest.raises(RuntimeError,
                                           match="shutting down"):
                            tg.create_task(coro)
                        coro.close()
                await asyncio.sleep(1)      # cancelled by the abort
        assert [type(e) for e in caught.value.exceptions] == [Boom]
        assert slow.cancelled()
        assert late is None or late.cancelled()
        assert shared.borrowed_tokens == 0

        with pytest.raises(ExceptionGroup):
            async with impl.BoundedTaskGroup(2, limiter=shared) as tg:
                task = await tg.spawn(fail_at_once())
                assert task.done() == eager
                await asyncio.sleep(1)      # cancelled by the abort
        assert shared.borrowed_tokens == 0

    run(main(), eager=eager)


def test_group_dropped_without_exit(impl, run, eager):
    """A group entered and then dropped: its tasks still run to their end
    and give their tokens back, the waiting ones included."""
    async def main():
        shared = impl.Limiter(2)
        tg = impl.BoundedTaskGroup(limiter=shared)
        await tg.__aenter__()
        tasks = [await tg.spawn(work(0.001)), tg.create_task(work(0.001)),
                 tg.create_task(work(0.001))]     # the last one waits
        assert shared.borrowed_tokens == 2
        del tg
        gc.collect()
        await asyncio.gather(*tasks)
        assert [t.result() for t in tasks] == [0.001] * 3
        assert shared.borrowed_tokens == 0

    run(main(), eager=eager)


def failing_after(count, error):
    """A task factory that makes `count` tasks, then refuses (closing the
    coroutine, as a well-behaved factory does)."""
    made = [0]

    def factory(loop, coro, **kwargs):
        if made[0] >= count:
            coro.close()
            raise error
        made[0] += 1
        kwargs.pop("eager_start", None)
        return asyncio.Task(coro, loop=loop, **kwargs)
    return factory


@pytest.mark.parametrize("made", [0, 1, 2])
@pytest.mark.parametrize("helper", ["amap", "amap-unbounded", "gather",
                                    "as_completed"])
def test_a_task_factory_that_raises_fails_the_stream(impl, run, helper,
                                                     made):
    """The loop refuses the stream's first, second or third worker task:
    the helper raises the factory's error (the C core used to yield a
    bogus None, then hang), the workers already made are awaited, nothing
    is left borrowed and no coroutine is left unawaited."""
    async def main():
        shared = impl.Limiter(2)
        loop = asyncio.get_running_loop()
        loop.set_task_factory(failing_after(made, OSError("no tasks")))
        try:
            async with asyncio.timeout(10):
                with pytest.raises(OSError, match="no tasks"):
                    if helper == "gather":
                        await impl.gather(*[work() for _ in range(6)],
                                          limit=3, limiter=shared)
                    elif helper == "as_completed":
                        async for future in impl.as_completed(
                                [work() for _ in range(6)], limit=3,
                                limiter=shared):
                            await future
                    else:
                        limit = None if helper == "amap-unbounded" else 3
                        async for _ in impl.amap(work, [0.0] * 6,
                                                 limit=limit,
                                                 limiter=shared):
                            pass
        finally:
            loop.set_task_factory(None)
        return shared.borrowed_tokens

    assert run(main()) == 0


@pytest.mark.parametrize("helper", ["amap", "gather", "as_completed"])
def test_a_limiter_that_cannot_be_taken_fails_the_stream(impl, run, helper):
    """A limiter in use on another loop raises when a worker takes it: the
    error reaches the consumer, as with a group (the reference's workers
    used to die with it, and the consumer waited forever)."""
    other = impl.Limiter(2)

    async def main():
        async with asyncio.timeout(10):
            with pytest.raises(RuntimeError, match="different event loop"):
                if helper == "gather":
                    await impl.gather(*[work() for _ in range(4)],
                                      limiter=other)
                elif helper == "as_completed":
                    async for future in impl.as_completed(
                            [work() for _ in range(4)], limiter=other):
                        await future
                else:
                    async for _ in impl.amap(work, [0.0] * 4, limit=2,
                                             limiter=other):
                        pass

    with in_use_on_another_loop(other):
        run(main())
        assert other.borrowed_tokens == 1      # the other loop's, still
    assert other.borrowed_tokens == 0


def test_subclasses_take_their_own_arguments(impl, run):
    """Users adapt the types: a Semaphore-shaped Limiter, a group with a
    fixed limit, a RateLimiter of so many per minute, each with its own
    __init__ calling the base's."""
    class Semaphore(impl.LimiterType):
        def __init__(self, value=1):
            super().__init__(value)

    class PairGroup(impl.GroupType):
        def __init__(self, *, limiter=None):
            super().__init__(2, limiter=limiter)

    class PerMinute(impl.RateLimiterType):
        def __init__(self, per_minute):
            super().__init__(per_minute, per=60.0)
            self.per_minute = per_minute

    async def main():
        semaphore, three = Semaphore(), Semaphore(3)
        async with semaphore:
            held = semaphore.borrowed_tokens
        running, peak = [0], [0]

        async def job():
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            await asyncio.sleep(0.001)
            running[0] -= 1

        async with PairGroup(limiter=three) as tg:
            for _ in range(6):
                await tg.spawn(job())
        rate = PerMinute(120)
        await rate.acquire()
        return (held, three.total_tokens, peak[0], tg.limit,
                rate.rate, rate.per, rate.per_minute,
                three.borrowed_tokens)

    assert run(main()) == (1, 3, 2, 2, 120, 60.0, 120, 0)


def test_a_subclass_that_skips_the_base_init_gets_a_clear_error(impl, run):
    """A limiter subclass whose __init__ forgets super().__init__() fails
    at its first use with a RuntimeError naming the class, and holds
    nothing afterwards."""
    made = []
    for base in (impl.LimiterType, impl.RateLimiterType):
        class Forgetful(base):
            def __init__(self):
                pass
        made.append(Forgetful())

    async def main():
        messages = []
        for limiter in made:
            for use in ("acquire", "acquire_nowait"):
                with pytest.raises(RuntimeError) as caught:
                    result = getattr(limiter, use)()
                    if use == "acquire":
                        await result
                messages.append(str(caught.value))
            with pytest.raises(ExceptionGroup) as caught:
                async with impl.GroupType(limiter=limiter) as tg:
                    tg.create_task(asyncio.sleep(0))
            [error] = caught.value.exceptions
            assert isinstance(error, RuntimeError), error
            messages.append(str(error))
        return messages

    assert set(run(main())) == {
        "Forgetful.__init__() was not called on this object"}


def test_a_stream_dropped_before_its_first_step_closes_its_coroutines(
        impl, run):
    """as_completed() and gather-like sources given coroutines, dropped
    without being iterated: the coroutines are closed (the `run` fixture
    fails on a never-awaited one)."""
    async def main():
        stream = impl.as_completed([work() for _ in range(3)], limit=2)
        del stream
        gc.collect()
        stream = impl.amap(work, [0.0] * 3)
        del stream
        gc.collect()

    run(main())


def test_failed_outcomes_never_taken_log_nothing(impl, run):
    """as_completed makes a done future for a coroutine's outcome when the
    consumer takes it: failed outcomes still queued when the consumer
    leaves were never handed out, and their errors are not reported as
    never retrieved (the loop's handler is not called)."""
    async def fail(i):
        raise ValueError(i)

    async def main():
        stream = impl.as_completed([fail(i) for i in range(3)])
        async for future in stream:
            assert isinstance(future.exception(), ValueError)
            break
        await stream.aclose()
        del stream, future

    run(main())


def test_after_a_break_the_items_end_in_the_next_iteration(impl, run):
    """A break out of as_completed or amap drops the iterator: the items
    still running are cancelled at once and have ended one loop iteration
    later (it used to take several)."""
    async def main():
        ended = []

        async def item(i):
            try:
                await asyncio.sleep(0 if i == 0 else 10)
            finally:
                ended.append(i)
            return i

        for helper in ("as_completed", "amap"):
            ended.clear()
            if helper == "as_completed":
                stream = impl.as_completed([item(i) for i in range(4)],
                                           limit=3)
            else:
                stream = impl.amap(item, range(4), limit=3)
            async for _ in stream:
                break
            del stream
            await asyncio.sleep(0)
            assert sorted(ended) == [0, 1, 2, 3], (helper, ended)
            await asyncio.sleep(0)   # the closing task closes the source

    run(main())
