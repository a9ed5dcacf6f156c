"""The bound: how many run, when tasks exist, and that every token comes back."""

from __future__ import annotations

import asyncio
import gc

import pytest

from helpers import Gauge


def group_tasks():
    me = asyncio.current_task()
    return [t for t in asyncio.all_tasks() if t is not me]


@pytest.mark.parametrize("method", ["spawn", "create_task"])
def test_never_more_than_limit_running(impl, run, method):
    async def main():
        gauge = Gauge()
        async with impl.BoundedTaskGroup(limit=3) as tg:
            for i in range(20):
                coro = gauge.item(i, delay=0.001 * (i % 4))
                if method == "spawn":
                    await tg.spawn(coro)
                else:
                    tg.create_task(coro)
        return gauge.peak, sorted(gauge.started), tg.statistics()

    peak, started, stats = run(main())
    assert peak == 3
    assert started == list(range(20))
    assert stats == (20, 0, 0, 20, 0)


def test_spawn_keeps_task_objects_at_the_limit(impl, run):
    async def main():
        peak_tasks = 0

        async def item():
            nonlocal peak_tasks
            peak_tasks = max(peak_tasks, len(group_tasks()))
            await asyncio.sleep(0)

        async with impl.BoundedTaskGroup(limit=8) as tg:
            for _ in range(10_000):
                await tg.spawn(item())
                peak_tasks = max(peak_tasks, len(group_tasks()))
        return peak_tasks

    assert run(main()) == 8


def test_finished_tasks_are_let_go_of_in_step_with_new_ones(impl, run):
    """A group may keep a few finished tasks to let go of as it starts new
    ones (so the young generation's count stays level), but never more than
    a bounded few, and none once its exit is over: counted by weak
    references, with no collection run."""
    import weakref

    async def main():
        gc_was = gc.isenabled()
        gc.disable()    # only reference counts may free them
        try:
            refs = []

            async def item():
                await asyncio.sleep(0)

            async with impl.BoundedTaskGroup(limit=8) as tg:
                for _ in range(2_000):
                    refs.append(weakref.ref(await tg.spawn(item())))
                for _ in range(3):
                    await asyncio.sleep(0)
                inside = sum(r() is not None for r in refs)
            return inside, sum(r() is not None for r in refs)
        finally:
            if gc_was:
                gc.enable()

    inside, after = run(main())
    assert inside <= 8 + 128, inside
    assert after == 0


def test_spawn_waits_before_the_task_exists(impl, run):
    async def main():
        release = asyncio.Event()
        async with impl.BoundedTaskGroup(limit=1) as tg:
            first = await tg.spawn(release.wait())
            spawning = asyncio.ensure_future(tg.spawn(asyncio.sleep(0)))
            await asyncio.sleep(0.01)
            before = (spawning.done(), len(group_tasks()),
                      tg.statistics().waiting)
            release.set()
            second = await spawning
            assert isinstance(second, asyncio.Task)
        return before, first.done(), second.done()

    assert run(main()) == ((False, 2, 1), True, True)


def test_create_task_returns_at_once_and_starts_later(impl, run):
    async def main():
        started = []
        release = asyncio.Event()

        async def item(i):
            started.append(i)
            await release.wait()

        async with impl.BoundedTaskGroup(limit=2) as tg:
            tasks = [tg.create_task(item(i)) for i in range(5)]
            await asyncio.sleep(0.01)
            midway = (list(started), tg.statistics())
            release.set()
        return midway, started, all(t.done() for t in tasks)

    (early, stats), started, all_done = run(main())
    assert early == [0, 1]
    assert stats.running == 2 and stats.waiting == 3 and stats.spawned == 5
    assert started == [0, 1, 2, 3, 4]
    assert all_done


@pytest.mark.parametrize("outcome", ["success", "error", "cancel-before-start",
                                     "cancel-while-running", "base-exception"])
@pytest.mark.parametrize("method", ["spawn", "create_task"])
def test_every_ending_returns_the_tokens(impl, run, eager, outcome, method):
    class Stop(BaseException):
        pass

    async def main():
        shared = impl.Limiter(2)

        async def item():
            await asyncio.sleep(0.01)
            if outcome == "error":
                raise ValueError("item")
            if outcome == "base-exception":
                raise Stop()

        try:
            async with impl.BoundedTaskGroup(limit=1, limiter=shared) as tg:
                if method == "spawn":
                    task = await tg.spawn(item())
                else:
                    task = tg.create_task(item())
                if outcome == "cancel-before-start":
                    task.cancel()
                elif outcome == "cancel-while-running":
                    await asyncio.sleep(0.001)
                    task.cancel()
                during = shared.borrowed_tokens
                await asyncio.sleep(0.05)
        except BaseExceptionGroup as eg:
            after_group = [type(e).__name__ for e in eg.exceptions]
        else:
            after_group = []
        after = shared.borrowed_tokens
        return during, after, after_group, task.cancelled(), \
            [lim.borrowed_tokens for lim in tg.limiters]

    during, after, errors, cancelled, borrowed = run(main(), eager=eager)
    assert during == 1   # held until the task's last step, however it ends
    assert after == 0
    assert borrowed == [0, 0]
    assert cancelled == outcome.startswith("cancel")
    assert errors == {"error": ["ValueError"],
                      "base-exception": ["Stop"]}.get(outcome, [])


def test_blocked_spawn_fails_when_a_sibling_fails(impl, run):
    async def main():
        limiter = impl.Limiter(1)
        outcomes = []

        async def producer(tg):
            coro = asyncio.sleep(1)
            try:
                await tg.spawn(coro)
            except RuntimeError as err:
                outcomes.append(str(err).endswith("is shutting down"))
            outcomes.append(coro.cr_frame is None)  # closed, never started

        async def crash():
            await asyncio.sleep(0.01)
            raise ValueError("crash")

        try:
            async with impl.BoundedTaskGroup(limiter=limiter) as tg:
                await tg.spawn(crash())
                feeder = asyncio.create_task(producer(tg))
                await asyncio.sleep(10)
        except ExceptionGroup:
            pass
        await feeder
        return outcomes, limiter.borrowed_tokens, tg.statistics()

    outcomes, borrowed, stats = run(main())
    assert outcomes == [True, True]
    assert borrowed == 0
    assert stats.waiting == 0 and stats.spawned == 1 and stats.failed == 1


def test_blocked_spawn_in_body_fails_when_body_is_cancelled(impl, run):
    async def main():
        blocker_started = asyncio.Event()
        limiter = impl.Limiter(1)
        closed = []

        async def body():
            async with impl.BoundedTaskGroup(limiter=limiter) as tg:
                await tg.spawn(hold(blocker_started))
                coro = asyncio.sleep(0)
                try:
                    await tg.spawn(coro)
                finally:
                    closed.append(coro.cr_frame is None)

        async def hold(event):
            event.set()
            await asyncio.sleep(10)

        task = asyncio.create_task(body())
        await blocker_started.wait()
        await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return closed, limiter.statistics()

    closed, stats = run(main())
    assert closed == [True]
    assert stats == (1, 0, 0, None)


def test_shared_limiter_caps_the_sum_of_two_groups(impl, run):
    async def main():
        shared = impl.Limiter(3)
        gauge = Gauge()

        async def feed(tg, base):
            for i in range(10):
                await tg.spawn(gauge.item(base + i, delay=0.002))

        async with impl.BoundedTaskGroup(limit=3, limiter=shared) as a, \
                impl.BoundedTaskGroup(limit=3, limiter=shared) as b:
            await asyncio.gather(feed(a, 0), feed(b, 100))
        return gauge.peak, len(gauge.started)

    assert run(main()) == (3, 20)


def test_aborting_group_hands_freed_tokens_to_the_other_group(impl, run):
    async def main():
        shared = impl.Limiter(2)
        other_started = []
        failing_waiting = []

        async def hold():
            await asyncio.sleep(10)

        async def crash():
            await asyncio.sleep(0.01)
            raise ValueError("crash")

        async def failing_group():
            async with impl.BoundedTaskGroup(limiter=shared) as tg:
                await tg.spawn(hold())
                await tg.spawn(crash())
                try:
                    await tg.spawn(asyncio.sleep(0))  # waits, then fails
                finally:
                    failing_waiting.append(True)

        async def mark(i):
            other_started.append(i)
            await asyncio.sleep(0)

        async with impl.BoundedTaskGroup(limiter=shared) as healthy:
            failing = asyncio.create_task(failing_group())
            await asyncio.sleep(0.001)
            spawns = [asyncio.create_task(healthy.spawn(mark(i)))
                      for i in range(3)]
            with pytest.raises(ExceptionGroup):
                await failing
            await asyncio.gather(*spawns)
        return failing_waiting, other_started, shared.statistics()

    failing_waiting, other_started, stats = run(main())
    assert failing_waiting == [True]
    assert other_started == [0, 1, 2]
    assert stats == (2, 0, 0, None)


def test_group_needs_a_token_of_each_limiter(impl, run):
    async def main():
        shared = impl.Limiter(2)
        gauge = Gauge()
        async with impl.BoundedTaskGroup(limit=5, limiter=[shared]) as tg:
            for i in range(10):
                tg.create_task(gauge.item(i, delay=0.001))
            await asyncio.sleep(0)
            own = [lim for lim in tg.limiters if lim is not shared][0]
            midway = (shared.borrowed_tokens, own.borrowed_tokens)
        return gauge.peak, midway, tg.limit

    peak, midway, limit = run(main())
    assert peak == 2 and midway == (2, 2) and limit == 5


def test_opposite_orders_do_not_deadlock(impl, run):
    async def main():
        first, second = impl.Limiter(1), impl.Limiter(1)
        done = []

        async def item(tag):
            await asyncio.sleep(0.001)
            done.append(tag)

        async def feed(tg, tag):
            for i in range(20):
                await tg.spawn(item((tag, i)))

        async with impl.BoundedTaskGroup(limiter=[first, second]) as a, \
                impl.BoundedTaskGroup(limiter=[second, first]) as b:
            await asyncio.wait_for(
                asyncio.gather(feed(a, "a"), feed(b, "b")), timeout=5)
        ranks = [lim for lim in a.limiters] == [lim for lim in b.limiters]
        return len(done), ranks

    assert run(main()) == (40, True)


def test_cancel_cancels_everything_and_exits_cleanly(impl, run):
    async def main():
        cancelled = []

        async def item(i):
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                cancelled.append(i)
                raise

        async with impl.BoundedTaskGroup(limit=2) as tg:
            tasks = [tg.create_task(item(i)) for i in range(4)]
            await asyncio.sleep(0.001)
            tg.cancel()
            await asyncio.sleep(10)
        return (sorted(cancelled), all(t.cancelled() for t in tasks),
                asyncio.current_task().cancelling(), tg.statistics())

    cancelled, all_cancelled, cancelling, stats = run(main())
    assert cancelled == [0, 1]   # 2 and 3 never started
    assert all_cancelled and cancelling == 0
    assert stats == (4, 0, 0, 4, 0)


def test_cancel_before_enter_cancels_on_entry(impl, run):
    async def main():
        tg = impl.BoundedTaskGroup(limit=2)
        tg.cancel()
        reached = []
        async with tg:
            coro = asyncio.sleep(10)
            with pytest.raises(RuntimeError, match="is shutting down"):
                tg.create_task(coro)
            coro.close()  # (before 3.13 create_task leaves it to us)
            await asyncio.sleep(10)
            reached.append(True)
        return reached, asyncio.current_task().cancelling()

    assert run(main()) == ([], 0)


def test_cancel_from_body_without_awaiting(impl, run):
    async def main():
        async with impl.BoundedTaskGroup(limit=2) as tg:
            tg.cancel()
        await asyncio.sleep(0)   # the pending cancellation was taken
        return asyncio.current_task().cancelling()

    assert run(main()) == 0


def test_eager_children_that_finish_at_once_return_tokens(impl, run, eager):
    async def main():
        limiter = impl.Limiter(1)

        async def instant(i):
            return i

        async with impl.BoundedTaskGroup(limiter=limiter) as tg:
            tasks = [await tg.spawn(instant(i)) for i in range(5)]
            tasks += [tg.create_task(instant(i)) for i in range(5, 8)]
        return [t.result() for t in tasks], limiter.borrowed_tokens

    assert run(main(), eager=eager) == (list(range(8)), 0)


def test_spawn_accepts_awaitables_that_are_not_coroutines(impl, run):
    async def main():
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        loop.call_later(0.001, future.set_result, "from a future")
        async with impl.BoundedTaskGroup(limit=1) as tg:
            task = await tg.spawn(future)
        return task.result()

    assert run(main()) == "from a future"


def test_create_task_and_spawn_queue_in_call_order(impl, run):
    async def main():
        order = []

        async def item(tag):
            order.append(tag)
            await asyncio.sleep(0)

        async with impl.BoundedTaskGroup(limit=1) as tg:
            hold = asyncio.Event()
            tg.create_task(hold.wait())
            tg.create_task(item("a"))
            spawner = asyncio.create_task(tg.spawn(item("b")))
            await asyncio.sleep(0)
            tg.create_task(item("c"))
            hold.set()
            await spawner
        return order

    assert run(main()) == ["a", "b", "c"]


def test_exit_waits_for_a_spawn_pending_in_another_task(impl, run):
    async def main():
        started = []

        async def item():
            started.append(True)
            await asyncio.sleep(0.001)

        async with impl.BoundedTaskGroup(limit=1) as tg:
            await tg.spawn(asyncio.sleep(0.01))
            producer = asyncio.create_task(tg.spawn(item()))
            await asyncio.sleep(0)
        return started, producer.done(), tg.statistics()

    started, producer_done, stats = run(main())
    assert started == [True] and producer_done
    assert stats == (2, 0, 0, 2, 0)


def test_limiter_shared_by_group_and_direct_acquire(impl, run):
    async def main():
        shared = impl.Limiter(1)
        order = []
        async with impl.BoundedTaskGroup(limiter=shared) as tg:
            await shared.acquire()          # the body holds the only token
            task = tg.create_task(asyncio.sleep(0))
            await asyncio.sleep(0.001)
            order.append(task.done())
            shared.release()                # now the task may start
            await task
            order.append(task.done())
        return order

    assert run(main()) == [False, True]


@pytest.mark.parametrize("how", ["cancel-before-start", "close-unawaited"])
def test_spawn_abandoned_before_it_starts_closes_the_coroutine(impl, run, how):
    async def main():
        async with impl.BoundedTaskGroup(limit=1) as tg:
            coro = asyncio.sleep(0)
            if how == "cancel-before-start":
                task = asyncio.create_task(tg.spawn(coro))
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            else:
                tg.spawn(coro).close()
        return coro.cr_frame is None, tg.statistics(), \
            tg.limiters[0].borrowed_tokens

    assert run(main()) == (True, (0, 0, 0, 0, 0), 0)


@pytest.mark.parametrize("method", ["spawn", "create_task"])
def test_task_factory_that_raises_gives_everything_back(impl, run, method):
    class FactoryError(Exception):
        pass

    async def main():
        loop = asyncio.get_running_loop()
        shared = impl.Limiter(1)
        async with impl.BoundedTaskGroup(limit=1, limiter=shared) as tg:
            def refuse(loop, coro, **kwargs):
                raise FactoryError("no tasks today")

            loop.set_task_factory(refuse)
            coro = asyncio.sleep(0)
            try:
                with pytest.raises(FactoryError):
                    if method == "spawn":
                        await tg.spawn(coro)
                    else:
                        tg.create_task(coro)
            finally:
                loop.set_task_factory(None)
            state = (coro.cr_frame is None, tg.statistics(),
                     [lim.borrowed_tokens for lim in tg.limiters])
            await tg.spawn(asyncio.sleep(0))   # the group still works
        return state

    closed, stats, borrowed = run(main())
    assert closed and borrowed == [0, 0]
    assert stats == (0, 0, 0, 0, 0)


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_tasks_destroyed_with_a_closed_loop_give_their_tokens_back(
        impl, loop_kind):
    import gc
    import sys
    from conftest import new_loop

    def close_under_pending_tasks(make_group):
        async def body():
            async with make_group() as tg:
                tg.create_task(asyncio.sleep(10))
                tg.create_task(asyncio.sleep(10))
                await asyncio.sleep(10)

        reported, unraisable = [], []
        old_hook = sys.unraisablehook
        sys.unraisablehook = unraisable.append
        try:
            loop = new_loop(loop_kind)
            loop.set_exception_handler(lambda loop, ctx: reported.append(ctx))
            task = loop.create_task(body())
            loop.run_until_complete(asyncio.sleep(0.01))
            loop.close()
            del task
            gc.collect()
        finally:
            sys.unraisablehook = old_hook
        return (sorted(repr(u.exc_value) for u in unraisable),
                sorted(ctx["message"] for ctx in reported))

    limiter = impl.Limiter(2)
    ours = close_under_pending_tasks(
        lambda: impl.BoundedTaskGroup(limiter=limiter))
    # asyncio.TaskGroup in the same spot complains the same way, no more.
    assert ours == close_under_pending_tasks(asyncio.TaskGroup)
    assert limiter.borrowed_tokens == 0
