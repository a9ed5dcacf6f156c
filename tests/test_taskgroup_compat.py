"""BoundedTaskGroup behaves as the running interpreter's asyncio.TaskGroup.

Each scenario runs three times: on asyncio.TaskGroup itself (the oracle), on
BoundedTaskGroup() without a limit, and on BoundedTaskGroup(limit=1000), a
bound larger than the work; all three must agree. The whole set runs with
and without asyncio.eager_task_factory (3.12+).
"""

from __future__ import annotations

import asyncio
import contextvars
import sys

import pytest

PY313 = sys.version_info >= (3, 13)


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
