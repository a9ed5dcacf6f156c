"""BoundedTaskGroup behaves as the running interpreter's asyncio.TaskGroup.

Each scenario runs three times: on asyncio.TaskGroup itself (the oracle), on
BoundedTaskGroup() without a limit, and on BoundedTaskGroup(limit=1000), a
bound larger than the work; all three must agree. The whole set runs with
and without asyncio.eager_task_factory (3.12+). Where CPython releases
differ (taskbound._compat), the scenario shows the difference, so that it
fails on the interpreter where the group would not follow asyncio.

cancel() exists on asyncio.TaskGroup from 3.15; before, the same scenarios
check BoundedTaskGroup against what 3.15.2 does.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc

import pytest

from taskbound import _compat

HAS_CANCEL = hasattr(asyncio.TaskGroup, "cancel")


@pytest.fixture(params=["asyncio", "unbounded", "roomy"])
def make_group(request, impl):
    if request.param == "asyncio":
        return asyncio.TaskGroup
    if request.param == "unbounded":
        return lambda: impl.BoundedTaskGroup()
    return lambda: impl.BoundedTaskGroup(limit=1000)


@pytest.fixture
def go(run, eager):
    return lambda main, **kw: run(main, eager=eager, **kw)


async def value_after(delay, value):
    await asyncio.sleep(delay)
    return value


async def fail_after(delay, exc):
    await asyncio.sleep(delay)
    raise exc


def bounded_groups(impl):
    return [lambda: impl.BoundedTaskGroup(),
            lambda: impl.BoundedTaskGroup(limit=1000)]


async def ending(coro):
    """The outcome of a scenario run in a task of its own, or "ended
    cancelled" where a cancellation leaked out of it."""
    task = asyncio.ensure_future(coro)
    try:
        return await task
    except asyncio.CancelledError:
        if task.cancelled() and not asyncio.current_task().cancelling():
            return "ended cancelled"
        raise


def same_as_asyncio(go, impl, scenario):
    """Runs scenario(make_group) on asyncio.TaskGroup, then on each bounded
    group; every outcome must equal asyncio's, which is returned."""
    expected = go(ending(scenario(asyncio.TaskGroup)))
    for make in bounded_groups(impl):
        assert go(ending(scenario(make))) == expected
    return expected


def same_as_cancel_of_315(go, impl, scenario, expected):
    """For scenarios with cancel(): asyncio's outcome where it has cancel(),
    else 3.15.2's, given."""
    if HAS_CANCEL:
        return same_as_asyncio(go, impl, scenario)
    for make in bounded_groups(impl):
        assert go(ending(scenario(make))) == expected
    return expected


def test_results_after_exit(make_group, go):
    async def main():
        async with make_group() as tg:
            t1 = tg.create_task(value_after(0.01, 1))
            t2 = tg.create_task(value_after(0, 2))
            t3 = tg.create_task(value_after(0.005, 3))
        return [t.result() for t in (t1, t2, t3)]

    assert go(main()) == [1, 2, 3]


def test_tasks_created_by_children_join_the_group(make_group, go):
    async def main():
        finished = []

        async def grandchild(i):
            await asyncio.sleep(0.001 * i)
            finished.append(i)

        async def child(tg):
            for i in range(3):
                tg.create_task(grandchild(i))
            await asyncio.sleep(0)

        async with make_group() as tg:
            tg.create_task(child(tg))
        return sorted(finished)

    assert go(main()) == [0, 1, 2]


def test_name_and_context(make_group, go):
    var = contextvars.ContextVar("var", default="outer")

    async def read_var():
        await asyncio.sleep(0)
        return var.get()

    async def main():
        ctx = contextvars.copy_context()
        ctx.run(var.set, "inner")
        async with make_group() as tg:
            named = tg.create_task(read_var(), name="the-name")
            in_ctx = tg.create_task(read_var(), context=ctx)
        return named.get_name(), named.result(), in_ctx.result()

    assert go(main()) == ("the-name", "outer", "inner")


def test_task_repr_names_the_users_coroutine(make_group, go):
    async def sleeper():
        await asyncio.sleep(0.01)

    async def main():
        async with make_group() as tg:
            task = tg.create_task(sleeper())
            await asyncio.sleep(0)
            running = repr(task)
        return running, repr(task)

    running, done = go(main())
    assert "sleeper()" in running and "running at" in running
    assert "sleeper()" in done and "done" in done


def test_nested_groups(make_group, go):
    async def main():
        async with make_group() as outer:
            async def inner_body():
                async with make_group() as inner:
                    a = inner.create_task(value_after(0, "a"))
                    b = inner.create_task(value_after(0.001, "b"))
                return a.result() + b.result()
            t = outer.create_task(inner_body())
        return t.result()

    assert go(main()) == "ab"


def test_child_error_cancels_siblings_and_body(make_group, go):
    async def main():
        cancelled = []

        async def victim():
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                cancelled.append("victim")
                raise

        try:
            async with make_group() as tg:
                tg.create_task(victim())
                tg.create_task(fail_after(0.001, ZeroDivisionError("boom")))
                try:
                    await asyncio.sleep(10)
                except asyncio.CancelledError:
                    cancelled.append("body")
                    raise
        except* ZeroDivisionError as eg:
            errors = eg.exceptions
        return cancelled, [str(e) for e in errors], \
            asyncio.current_task().cancelling()

    cancelled, errors, cancelling = go(main())
    assert sorted(cancelled) == ["body", "victim"]
    assert errors == ["boom"]
    assert cancelling == 0


def test_two_errors_at_once_are_both_reported(make_group, go):
    async def main():
        go_ahead = asyncio.Event()

        async def fail_on_signal(exc):
            await go_ahead.wait()
            raise exc

        try:
            async with make_group() as tg:
                tg.create_task(fail_on_signal(ValueError("a")))
                tg.create_task(fail_on_signal(TypeError("b")))
                await asyncio.sleep(0)
                go_ahead.set()
        except BaseExceptionGroup as eg:
            return type(eg).__name__, sorted(str(e) for e in eg.exceptions)

    assert go(main()) == ("ExceptionGroup", ["a", "b"])


def test_body_error_and_child_error_grouped(make_group, go):
    async def main():
        try:
            async with make_group() as tg:
                tg.create_task(fail_after(0, ValueError("child")))
                await asyncio.sleep(0.01)
        except BaseExceptionGroup as eg:
            first = [str(e) for e in eg.exceptions]
        try:
            async with make_group() as tg:
                tg.create_task(value_after(10, None))
                raise KeyError("body")
        except BaseExceptionGroup as eg:
            second = [type(e).__name__ for e in eg.exceptions]
        return first, second

    assert go(main()) == (["child"], ["KeyError"])


def test_base_exception_in_child_gives_base_exception_group(make_group, go):
    class Custom(BaseException):
        pass

    async def main():
        try:
            async with make_group() as tg:
                tg.create_task(fail_after(0, Custom()))
                tg.create_task(value_after(10, None))
        except BaseExceptionGroup as eg:
            return (type(eg) is BaseExceptionGroup,
                    [type(e).__name__ for e in eg.exceptions])

    assert go(main()) == (True, ["Custom"])


def test_cancelled_error_is_left_out_of_the_group(make_group, go):
    async def main():
        async def cancels_itself():
            await asyncio.sleep(0)
            raise asyncio.CancelledError

        try:
            async with make_group() as tg:
                tg.create_task(cancels_itself())
                tg.create_task(fail_after(0.005, ValueError("only")))
        except ExceptionGroup as eg:
            return [str(e) for e in eg.exceptions]

    assert go(main()) == ["only"]


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_keyboard_interrupt_from_body_is_bare(make_group, go, exc_type):
    async def main():
        cancelled = []

        async def child():
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                cancelled.append(True)
                raise

        try:
            async with make_group() as tg:
                tg.create_task(child())
                await asyncio.sleep(0)
                raise exc_type()
        except exc_type:
            return cancelled

    assert go(main()) == [True]


def test_parent_cancelled_from_outside(make_group, go):
    async def main():
        inner_cancelled = []

        async def child():
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                inner_cancelled.append(True)
                raise

        async def body():
            async with make_group() as tg:
                tg.create_task(child())
                await asyncio.sleep(10)

        task = asyncio.create_task(body())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return inner_cancelled, task.cancelling(), task.cancelled()

    assert go(main()) == ([True], 1, True)


def test_parent_cancelled_while_exit_waits(make_group, go):
    async def main():
        async def body():
            async with make_group() as tg:
                tg.create_task(value_after(10, None))
            return "unreachable"

        task = asyncio.create_task(body())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return task.cancelling()

    assert go(main()) == 1


@pytest.mark.parametrize("bounded", ["unbounded", "roomy"])
def test_child_error_with_parent_cancelled_from_outside(impl, go, bounded):
    # How this ends differs between 3.11/3.12 and 3.13: whatever the running
    # interpreter's TaskGroup does, ours must do the same.
    def scenario(make):
        async def main():
            async def body():
                async with make() as tg:
                    tg.create_task(fail_after(0.01, ValueError("x")))
                    try:
                        await asyncio.sleep(10)
                    finally:
                        await asyncio.sleep(0.02)

            task = asyncio.create_task(body())
            await asyncio.sleep(0.001)
            task.cancel()
            try:
                await task
            except BaseException as e:
                outcome = type(e).__name__
            return outcome, task.cancelling()
        return main()

    limit = None if bounded == "unbounded" else 1000
    expected = go(scenario(asyncio.TaskGroup))
    assert go(scenario(lambda: impl.BoundedTaskGroup(limit))) == expected


def test_error_in_group_leaves_cancelling_at_zero(make_group, go):
    async def main():
        try:
            async with make_group() as tg:
                tg.create_task(fail_after(0, ValueError()))
                await asyncio.sleep(1)
        except ExceptionGroup:
            pass
        await asyncio.sleep(0)  # not cancelled any more
        return asyncio.current_task().cancelling()

    assert go(main()) == 0


def test_misuse_messages(make_group, go):
    async def main():
        messages = []
        tg = make_group()
        coro = value_after(0, None)
        with pytest.raises(RuntimeError) as err:
            tg.create_task(coro)
        coro.close()
        messages.append(str(err.value).endswith("has not been entered"))
        async with tg:
            with pytest.raises(RuntimeError) as err:
                async with tg:
                    pass
            messages.append(str(err.value).endswith("has already been entered"))
        coro = value_after(0, None)
        with pytest.raises(RuntimeError) as err:
            tg.create_task(coro)
        coro.close()
        messages.append(str(err.value).endswith("is finished"))
        return messages

    assert go(main()) == [True, True, True]


def test_no_parent_task(make_group, run):
    def callback(holder):
        group = make_group()
        coro = group.__aenter__()
        try:
            coro.send(None)
        except RuntimeError as err:
            holder.set_result(str(err))
        except StopIteration:
            holder.set_result("entered")

    async def main():
        holder = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(callback, holder)
        return await holder

    assert run(main()).endswith("cannot determine the parent task")


def test_create_after_abort_is_shutting_down(make_group, go):
    async def main():
        tg = make_group()
        try:
            async with tg:
                tg.create_task(fail_after(0, ValueError()))
                try:
                    await asyncio.sleep(1)
                except asyncio.CancelledError:
                    coro = value_after(0, None)
                    with pytest.raises(RuntimeError) as err:
                        tg.create_task(coro)
                    coro.close()
                    message = str(err.value)
                    raise
        except ExceptionGroup:
            pass
        return message.endswith("is shutting down")

    assert go(main()) is True


def test_done_callbacks_run_before_exit_returns(make_group, go):
    async def main():
        seen = []
        async with make_group() as tg:
            for i in range(3):
                task = tg.create_task(value_after(0.001 * i, i))
                task.add_done_callback(lambda t: seen.append(t.result()))
        return seen

    assert go(main()) == [0, 1, 2]


def test_exit_after_children_are_done(make_group, go):
    async def main():
        async with make_group() as tg:
            tasks = [tg.create_task(value_after(0, i)) for i in range(5)]
            await asyncio.sleep(0.01)
        return [t.result() for t in tasks]

    assert go(main()) == list(range(5))


# ---- where CPython releases differ ----

async def start_with_keywords(tg, method):
    """Starts a child with name= and eager_start=, or again without the
    latter where it is refused; returns what happened."""
    started = []

    async def child():
        started.append(True)
        await asyncio.sleep(0)

    async def start(coro, **kwargs):
        if method == "spawn":
            return await tg.spawn(coro, **kwargs)
        return tg.create_task(coro, **kwargs)

    coro = child()
    try:
        task = await start(coro, name="kw", eager_start=True)
        outcome = "created"
    except TypeError:
        task = await start(coro, name="kw")
        outcome = "TypeError"
    return outcome, bool(started), task.get_name()


@pytest.mark.parametrize("method", ["create_task", "spawn"])
def test_task_keywords(impl, go, method):
    # 3.14 passes any keyword to the loop's create_task; before, a keyword
    # other than name= and context= is a TypeError that leaves the
    # coroutine as it was, so the call can be retried without it. spawn()
    # takes what create_task() takes.
    def scenario(make, method):
        async def main():
            async with make() as tg:
                return await start_with_keywords(tg, method)
        return main()

    expected = go(scenario(asyncio.TaskGroup, "create_task"))
    for make in bounded_groups(impl):
        assert go(scenario(make, method)) == expected
    assert expected[0] == ("created" if _compat.CREATE_TASK_KWARGS
                           else "TypeError")


async def fail_now(exc):
    raise exc


def test_eager_child_failing_at_once_then_another_create_task(impl, go):
    # gh-128550/gh-128588: from 3.12.9 and 3.13.2 a child that fails in its
    # eager first step is handled by a scheduled callback, so the body's
    # next create_task() in the same step is not refused.
    def scenario(make):
        async def main():
            second = None
            try:
                async with make() as tg:
                    tg.create_task(fail_now(ValueError("now")))
                    coro = value_after(10, None)
                    try:
                        second = tg.create_task(coro)
                    except RuntimeError:
                        coro.close()
                        raise
                    await asyncio.sleep(0)
            except BaseExceptionGroup as eg:
                errors = sorted(type(e).__name__ for e in eg.exceptions)
            return errors, second is not None and second.cancelled()
        return main()

    same_as_asyncio(go, impl, scenario)


def test_sibling_that_started_a_failing_child_is_cancelled(impl, go):
    # gh-128550: a child whose own eager first step starts a child that
    # fails at once is cancelled with the rest (3.12.9+, 3.13.2+; before,
    # asyncio left it running).
    def scenario(make):
        async def main():
            where = []
            try:
                async with make() as tg:
                    async def second():
                        tg.create_task(fail_now(KeyError("third")))
                        step = 0
                        try:
                            await asyncio.sleep(0)
                            step = 1
                            await asyncio.sleep(0)
                            step = 2
                            await asyncio.sleep(0.2)
                            where.append("not cancelled")
                        except asyncio.CancelledError:
                            where.append(f"cancelled at {step}")
                            raise

                    tg.create_task(second())
            except* KeyError as eg:
                errors = [str(e) for e in eg.exceptions]
            return where, errors
        return main()

    same_as_asyncio(go, impl, scenario)


def test_no_cancellation_leaks_out_after_an_eager_failure(impl, go):
    # gh-128588: on 3.12 before 3.12.9 the group's cancellation of its
    # parent leaked past the group when a child failed eagerly.
    def scenario(make):
        async def main():
            try:
                async with make() as tg:
                    tg.create_task(fail_now(ValueError()))
            except* ValueError:
                pass
            try:
                await asyncio.sleep(0)
                leaked = False
            except asyncio.CancelledError:
                leaked = True
            return leaked, asyncio.current_task().cancelling()
        return main()

    same_as_asyncio(go, impl, scenario)


def test_call_graph_of_a_running_child(impl, go):
    # 3.14 links each child to the parent task for capture_call_graph().
    if _compat.add_to_awaited_by is None:
        assert not hasattr(asyncio, "capture_call_graph")
        return

    def scenario(make):
        async def main():
            async def leaf():
                await asyncio.sleep(0.05)

            async def child():
                await leaf()

            me = asyncio.current_task()
            async with make() as tg:
                task = tg.create_task(child())
                await asyncio.sleep(0.01)
                graph = asyncio.capture_call_graph(task)
                running = ([e.frame.f_code.co_name for e in graph.call_stack],
                           [g.future is me for g in graph.awaited_by])
            done = asyncio.capture_call_graph(task)
            return running, [e.frame for e in done.call_stack], \
                done.awaited_by
        return main()

    running, _, after = same_as_asyncio(go, impl, scenario)
    assert running == (["sleep", "leaf", "child"], [True])
    assert after == ()


def test_a_waiting_child_shows_its_wait(impl, go):
    # Before its tokens come its coroutine has not started: its stack, repr
    # and call graph show the wait (taskbound's stand-in) instead.
    async def main():
        async def child():
            await asyncio.sleep(0)

        me = asyncio.current_task()
        async with impl.BoundedTaskGroup(limit=1) as tg:
            tg.create_task(asyncio.sleep(0.02))
            second = tg.create_task(child())
            await asyncio.sleep(0)
            frames = second.get_stack()
            waiting = ([f.f_code.co_name for f in frames],
                       frames[0].f_locals["limiter"] is tg.limiters[0],
                       "child() running at" in repr(second)
                       and "taskbound" in repr(second))
            if hasattr(asyncio, "capture_call_graph"):
                graph = asyncio.capture_call_graph(second)
                waiting += ([e.frame.f_code.co_name
                             for e in graph.call_stack],
                            [g.future is me for g in graph.awaited_by])
            await asyncio.sleep(0.05)
        return waiting, second.get_stack()

    waiting, after = go(main())
    expected = (["waiting_for_tokens"], True, True)
    if hasattr(asyncio, "capture_call_graph"):
        expected += (["waiting_for_tokens"], [True])
    assert waiting == expected
    assert after == []


def test_cancel_then_a_cancellation_from_outside_while_the_exit_waits(
        impl, go):
    # gh-155433 (3.15.2): a cancellation that is not the group's own is
    # re-raised, not dropped.
    def scenario(make):
        async def main():
            cancelling = asyncio.Event()
            release = asyncio.Event()

            async def child():
                try:
                    await asyncio.sleep(10)
                finally:
                    cancelling.set()
                    await release.wait()

            async def body():
                async with make() as tg:
                    tg.create_task(child())
                    await asyncio.sleep(0)
                    tg.cancel()
                return "carried on"

            task = asyncio.create_task(body())
            await cancelling.wait()
            task.cancel("from outside")
            release.set()
            try:
                return await task
            except asyncio.CancelledError as err:
                return type(err).__name__, err.args
        return main()

    same_as_cancel_of_315(go, impl, scenario,
                          ("CancelledError", ("from outside",)))


def test_eager_child_calling_cancel_before_it_suspends(impl, go):
    # gh-155418 (3.15.2): the child is cancelled with the rest.
    def scenario(make):
        async def main():
            async def child(tg):
                tg.cancel()
                await asyncio.sleep(0.3)

            async with make() as tg:
                task = tg.create_task(child(tg))
            return task.cancelled(), asyncio.current_task().cancelling()
        return main()

    same_as_cancel_of_315(go, impl, scenario, (True, 0))


def test_cancel_from_a_body_that_never_awaits(impl, go):
    # The exit takes no loop turn where uncancel() drops the pending
    # cancellation (3.13+); before, it takes one to receive it. Either way
    # nothing leaks past the group.
    def scenario(make):
        async def main():
            loop = asyncio.get_running_loop()
            ticks = 0
            ticking = True

            def tick():
                nonlocal ticks
                ticks += 1
                if ticking:
                    loop.call_soon(tick)

            loop.call_soon(tick)
            await asyncio.sleep(0)
            before = ticks
            async with make() as tg:
                tg.cancel()
            turns = ticks - before
            ticking = False
            await asyncio.sleep(0)
            return turns, asyncio.current_task().cancelling()
        return main()

    same_as_cancel_of_315(go, impl, scenario,
                          (0 if _compat.UNCANCEL_AFTER_WAIT else 1, 0))


def test_lone_generator_exit_from_the_body(impl, go):
    # 3.15 re-raises it bare, so aclose() of an async generator holding a
    # group closes it cleanly; before, it comes in a BaseExceptionGroup.
    def scenario(make):
        async def main():
            async def numbers():
                async with make() as tg:
                    tg.create_task(asyncio.sleep(0))
                    yield 1

            gen = numbers()
            await gen.asend(None)
            try:
                await gen.aclose()
            except BaseException as err:
                return type(err).__name__, [
                    type(e).__name__ for e in getattr(err, "exceptions", [])]
            return "closed"
        return main()

    outcome = same_as_asyncio(go, impl, scenario)
    assert (outcome == "closed") is _compat.BARE_GENERATOR_EXIT


def test_generator_exit_beside_a_child_error_is_grouped(impl, go):
    def scenario(make):
        async def main():
            try:
                async with make() as tg:
                    tg.create_task(fail_now(GeneratorExit()))
                    # (A group that handles an eagerly failed child at
                    # once refuses the second, and before 3.13 leaves it
                    # open.)
                    coro = fail_now(AssertionError("t2"))
                    try:
                        tg.create_task(coro)
                    except RuntimeError:
                        coro.close()
                        raise
            except BaseExceptionGroup as eg:
                return sorted(type(e).__name__ for e in eg.exceptions)
        return main()

    outcome = same_as_asyncio(go, impl, scenario)
    # (On 3.12 before 3.12.9 an eager failure leaks a cancellation.)
    assert outcome == "ended cancelled" or "GeneratorExit" in outcome


@pytest.mark.parametrize("method", ["spawn", "create_task"])
def test_raised_errors_keep_nothing_alive(impl, go, eager, method):
    # The exit lets go of the errors and the parent task, as asyncio's does
    # from 3.13.2, so only the frame that caught it refers to an error.
    async def main():
        class Done(Exception):
            pass

        async def fail():
            raise Done

        try:
            async with impl.BoundedTaskGroup(limit=2) as tg:
                if method == "spawn":
                    await tg.spawn(fail())
                else:
                    tg.create_task(fail())
                await asyncio.sleep(0.01)
        except* Done as eg:
            exc = eg.exceptions[0]
        # (From 3.14 a running coroutine refers to its own locals.)
        me = asyncio.current_task().get_coro()
        refs = [ref for ref in gc.get_referrers(exc) if ref is not me]
        if eager and not _compat.EAGER_DONE_SCHEDULED:
            # Before gh-128552 (3.12.9, 3.13.2) the loop's own
            # create_task() keeps a task that failed eagerly in a cycle.
            holders = [ref for task in refs for ref in gc.get_referrers(task)
                       if ref is not me and ref is not refs]
            assert all(isinstance(task, asyncio.Task) for task in refs)
            assert {type(ref).__name__ for ref in holders} <= {"frame"}
            assert {ref.f_code.co_name for ref in holders} <= {"create_task"}
            return []
        return refs

    assert go(main()) == []
