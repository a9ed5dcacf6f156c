"""gather, as_completed and amap: order, laziness, bounded tasks and memory,
back-pressure, and every way a stream can end early."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

var = contextvars.ContextVar("var", default="caller")


async def square(x, delay=0.0):
    await asyncio.sleep(delay)
    return x * x


class Source:
    """A generator of items whose progress is recorded."""

    def __init__(self, n, make=lambda i: i) -> None:
        self.n = n
        self.make = make
        self.pulled = 0
        self.closed = False

    def sync(self):
        try:
            for i in range(self.n):
                self.pulled += 1
                yield self.make(i)
        finally:
            self.closed = True

    async def asynchronous(self):
        try:
            for i in range(self.n):
                await asyncio.sleep(0)
                self.pulled += 1
                yield self.make(i)
        finally:
            self.closed = True


def others():
    me = asyncio.current_task()
    return len([t for t in asyncio.all_tasks() if t is not me])


# -- order --

def test_gather_keeps_input_order(impl, run):
    async def main():
        delays = [0.005, 0, 0.002, 0.001, 0]
        return await impl.gather(*(square(i, d) for i, d in enumerate(delays)),
                                 limit=2)

    assert run(main()) == [0, 1, 4, 9, 16]


@pytest.mark.parametrize("kind", ["list", "generator", "async-generator"])
def test_amap_ordered_and_unordered(impl, run, kind):
    async def main():
        def items(source):
            return {"list": list(range(8)), "generator": source.sync(),
                    "async-generator": source.asynchronous()}[kind]

        async def slow_even(x):
            await asyncio.sleep(0.004 if x % 2 == 0 else 0)
            return x

        ordered = [x async for x in impl.amap(slow_even, items(Source(8)),
                                              limit=4)]
        unordered = [x async for x in impl.amap(slow_even, items(Source(8)),
                                                limit=4, ordered=False)]
        return ordered, unordered

    ordered, unordered = run(main())
    assert ordered == list(range(8))
    assert sorted(unordered) == list(range(8)) and unordered != ordered
    assert unordered[:2] == [1, 3]     # odd ones finish first


def test_as_completed_yields_in_completion_order(impl, run):
    async def main():
        loop = asyncio.get_running_loop()
        head_may_finish = asyncio.Event()

        async def head():
            await head_may_finish.wait()
            return 9

        async def quick():
            return 4

        given = loop.create_future()
        loop.call_soon(given.set_result, "future")
        task = asyncio.create_task(square(5))
        order = []
        # limit 2: head() holds one worker; the other takes the future, the
        # task and quick() in turn; head() finishes last, when let go.
        async with impl.as_completed([head(), given, task, quick()],
                                     limit=2) as done:
            async for future in done:
                assert future.done()
                order.append(future if future in (given, task)
                             else future.result())
                if len(order) == 3:
                    head_may_finish.set()
        return order, given, task

    order, given, task = run(main())
    assert order == [given, task, 4, 9]


def test_as_completed_hands_failures_in_futures(impl, run):
    async def main():
        async def boom():
            raise ValueError("boom")

        results = []
        async for future in impl.as_completed([boom(), square(2)], limit=1):
            try:
                results.append(future.result())
            except ValueError as exc:
                results.append(str(exc))
        return results

    assert run(main()) == ["boom", 4]


# -- laziness, tasks, memory --

@pytest.mark.parametrize("helper", ["amap", "amap-unordered", "as_completed",
                                    "gather"])
def test_pulls_lazily(impl, run, helper):
    async def main():
        source = Source(50, make=lambda i: i)
        ahead = []

        async def work(i):
            ahead.append(source.pulled - done[0])
            await asyncio.sleep(0)
            return i

        done = [0]
        if helper == "gather":
            gen = (work(i) for i in source.sync())
            results = await impl.gather(*gen, limit=5)
            return len(results), None
        if helper == "as_completed":
            iterator = impl.as_completed((work(i) for i in source.sync()),
                                         limit=5)
        else:
            iterator = impl.amap(work, source.sync(), limit=5,
                                 ordered=helper == "amap")
        async for _ in iterator:
            done[0] += 1
        return done[0], max(ahead)

    count, ahead = run(main())
    assert count == 50
    if helper != "gather":     # gather(*gen) unpacks its input up front
        assert ahead <= 2 * 5


@pytest.mark.parametrize("helper", ["amap", "amap-unordered", "as_completed"])
def test_live_tasks_stay_at_the_limit(impl, run, helper):
    async def main(n):
        peak = [0]

        async def item(i):
            peak[0] = max(peak[0], others())
            await asyncio.sleep(0)
            return i

        if helper == "as_completed":
            iterator = impl.as_completed((item(i) for i in range(n)),
                                         limit=10)
        else:
            iterator = impl.amap(item, range(n), limit=10,
                                 ordered=helper == "amap")
        count = 0
        async for _ in iterator:
            count += 1
        return count, peak[0]

    small = run(main(1_000))
    large = run(main(20_000))
    assert small[0] == 1_000 and large[0] == 20_000
    assert large[1] <= 10 and large[1] == small[1]


def test_gather_of_a_large_generator_keeps_tasks_bounded(impl, run):
    async def main():
        peak = [0]

        async def item(i):
            peak[0] = max(peak[0], others())
            await asyncio.sleep(0)
            return i

        results = await impl.gather(*(item(i) for i in range(20_000)),
                                    limit=10)
        return len(results), results[-1], peak[0]

    assert run(main()) == (20_000, 19_999, 10)


def test_slow_consumer_holds_the_source_back(impl, run):
    async def main():
        source = Source(60)
        ahead = 0

        async def fast(i):
            await asyncio.sleep(0)
            return i

        consumed = 0
        async for _ in impl.amap(fast, source.sync(), limit=4,
                                 ordered=False):
            consumed += 1
            ahead = max(ahead, source.pulled - consumed)
            await asyncio.sleep(0.001)     # a slow consumer
        return consumed, ahead

    consumed, ahead = run(main())
    assert consumed == 60
    assert ahead <= 2 * 4 + 1


def test_ordered_mode_buffers_at_most_the_limit(impl, run):
    async def main():
        source = Source(30)
        ahead = 0

        async def item(i):
            await asyncio.sleep(0.02 if i == 0 else 0)   # a slow head
            return i

        seen = []
        async for x in impl.amap(item, source.sync(), limit=4):
            if not seen:
                ahead = source.pulled    # all pulled while the head ran
            seen.append(x)
        return seen, ahead

    seen, ahead = run(main())
    assert seen == list(range(30))
    assert ahead <= 2 * 4


# -- context, timeouts, limiters --

def test_each_item_runs_in_its_own_copy_of_the_callers_context(impl, run):
    async def main():
        var.set("set by the caller")

        async def item(i):
            seen = var.get()
            var.set(f"item {i}")       # must not leak to other items
            await asyncio.sleep(0)
            return seen, var.get()

        return [x async for x in impl.amap(item, range(6), limit=2)]

    results = run(main())
    assert results == [("set by the caller", f"item {i}") for i in range(6)]


def test_timeout_inside_an_item_works(impl, run):
    async def main():
        async def item(i):
            try:
                async with asyncio.timeout(0.01):
                    await asyncio.sleep(10 if i == 1 else 0)
            except TimeoutError:
                return "timed out"
            return i

        return [x async for x in impl.amap(item, range(4), limit=2)], \
            asyncio.current_task().cancelling()

    assert run(main()) == ([0, "timed out", 2, 3], 0)


def test_shared_limiters_bound_the_stream(impl, run):
    async def main():
        shared = impl.Limiter(2)
        running = [0, 0]

        async def item(i):
            running[0] += 1
            running[1] = max(running[1], running[0])
            await asyncio.sleep(0.001)
            running[0] -= 1
            return i

        results = [x async for x in impl.amap(item, range(20), limit=5,
                                              limiter=shared)]
        return results, running[1], shared.borrowed_tokens

    results, peak, borrowed = run(main())
    assert results == list(range(20)) and peak == 2 and borrowed == 0


def test_rate_limited_stream(impl, timed_run):
    async def main():
        loop = asyncio.get_running_loop()
        rate = impl.RateLimiter(100)       # 10 ms apart
        t0 = loop.time()

        async def stamp(i):
            return loop.time() - t0

        return [x async for x in impl.amap(stamp, range(5), limit=3,
                                           limiter=rate)]

    starts = timed_run(main())
    for i, start in enumerate(starts):
        assert start >= i * 0.01 - 1e-6


# -- errors and early ends --

def test_return_exceptions_puts_errors_in_place(impl, run):
    async def main():
        async def item(i):
            if i % 3 == 1:
                raise ValueError(i)
            return i

        gathered = await impl.gather(*(item(i) for i in range(6)), limit=2,
                                     return_exceptions=True)
        mapped = [x async for x in impl.amap(item, range(6), limit=2,
                                             return_exceptions=True)]
        return gathered, mapped

    for results in run(main()):
        assert [type(r).__name__ if isinstance(r, Exception) else r
                for r in results] == [0, "ValueError", 2, 3, "ValueError", 5]


@pytest.mark.parametrize("helper", ["gather", "amap"])
def test_first_error_cancels_the_rest_then_raises(impl, run, helper):
    async def main():
        source = Source(100)
        cancelled = []
        limiter = impl.Limiter(3)

        async def item(i):
            try:
                if i == 2:
                    await asyncio.sleep(0.002)
                    raise KeyError("bad item")
                await asyncio.sleep(1)
                return i
            except asyncio.CancelledError:
                cancelled.append(i)
                raise

        with pytest.raises(KeyError):
            if helper == "gather":
                await impl.gather(*[item(i) for i in range(10)], limit=3,
                                  limiter=limiter)
            else:
                async for _ in impl.amap(item, source.sync(), limit=3,
                                         limiter=limiter):
                    pass
        return sorted(cancelled), source.closed, limiter.borrowed_tokens

    cancelled, closed, borrowed = run(main())
    assert cancelled == [0, 1] and borrowed == 0
    assert closed or helper == "gather"


@pytest.mark.parametrize("ending", ["break", "aclose", "context-exit",
                                    "consumer-cancelled"])
@pytest.mark.parametrize("source_kind", ["sync", "async"])
def test_every_early_end_cleans_up(impl, run, ending, source_kind):
    async def main():
        source = Source(1000)
        limiter = impl.Limiter(4)
        cancelled = []

        long_one_started = asyncio.Event()

        async def item(i):
            try:
                if i >= 3:
                    long_one_started.set()
                    await asyncio.sleep(1)
                return i
            except asyncio.CancelledError:
                cancelled.append(i)
                raise

        items = source.sync() if source_kind == "sync" \
            else source.asynchronous()

        async def consume():
            iterator = impl.amap(item, items, limit=4, limiter=limiter,
                                 ordered=False)
            if ending == "context-exit":
                async with iterator:
                    async for _ in iterator:
                        await long_one_started.wait()
                        break
            elif ending == "aclose":
                async for _ in iterator:
                    await long_one_started.wait()
                    break
                await iterator.aclose()
            else:
                async for _ in iterator:
                    if ending == "break":
                        await long_one_started.wait()
                        break
                del iterator     # a dropped iterator is finalized

        task = asyncio.create_task(consume())
        if ending == "consumer-cancelled":
            await long_one_started.wait()
            await asyncio.sleep(0)
            task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        for _ in range(5):
            await asyncio.sleep(0)
        return cancelled, source.closed, limiter.borrowed_tokens, others()

    cancelled, closed, borrowed, leftover = run(main())
    assert cancelled and closed and borrowed == 0 and leftover == 0


def test_coroutines_never_started_are_closed(impl, run):
    async def main():
        coros = [square(i, 0.01) for i in range(10)]

        async def bad():
            raise RuntimeError("first")

        with pytest.raises(RuntimeError):
            await impl.gather(bad(), *coros, limit=2)
        return [c.cr_frame is None for c in coros]

    assert all(run(main()))


@pytest.mark.parametrize("source_kind", ["sync", "async"])
def test_source_error_propagates_after_in_flight_is_cancelled(impl, run,
                                                             source_kind):
    async def main():
        cancelled = []

        def sync_source():
            yield 0
            yield 1
            raise OSError("the source broke")

        async def async_source():
            for i in sync_source():
                await asyncio.sleep(0)
                yield i

        async def item(i):
            try:
                await asyncio.sleep(1)
            except asyncio.CancelledError:
                cancelled.append(i)
                raise

        source = sync_source() if source_kind == "sync" else async_source()
        with pytest.raises(OSError, match="source broke"):
            async for _ in impl.amap(item, source, limit=4):
                pass
        return sorted(cancelled)

    assert run(main()) == [0, 1]


def test_gather_and_as_completed_take_futures_and_tasks(impl, run):
    async def main():
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        loop.call_soon(future.set_result, "f")
        task = asyncio.create_task(square(3))
        gathered = await impl.gather(future, task, square(2), limit=2)
        again = loop.create_future()
        loop.call_soon(again.set_result, "g")
        seen = [f async for f in impl.as_completed([again], limit=1)]
        return gathered, seen == [again]

    assert run(main()) == (["f", 9, 4], True)


# -- bad input --

def test_bad_arguments_are_refused_up_front(impl, run):
    async def main():
        errors = []
        for call in (lambda: impl.amap(42, range(3)),
                     lambda: impl.amap(square, 42),
                     lambda: impl.amap(square, range(3), limit=0),
                     lambda: impl.amap(square, range(3), limit=1.5),
                     lambda: impl.amap(square, range(3), limiter="x"),
                     lambda: impl.as_completed(42)):
            with pytest.raises((TypeError, ValueError)) as err:
                call()
            errors.append(type(err.value).__name__)
        coro = square(1)
        with pytest.raises(TypeError):
            await impl.gather(coro, 42, limit=2)
        errors.append(coro.cr_frame is None)
        return errors

    assert run(main()) == ["TypeError", "TypeError", "ValueError",
                           "TypeError", "TypeError", "TypeError", True]


def test_empty_inputs(impl, run):
    async def main():
        return (await impl.gather(limit=3),
                [x async for x in impl.amap(square, [], limit=3)],
                [f async for f in impl.as_completed([], limit=3)])

    assert run(main()) == ([], [], [])


@pytest.mark.parametrize("helper", ["amap", "gather", "as_completed"])
def test_worker_tasks_are_named_for_their_helper(impl, run, helper):
    """In task listings and reprs a stream's workers say whose they are:
    'amap worker 1', 'amap worker 2', ..."""
    async def item(i):
        await asyncio.sleep(0)
        return sorted(task.get_name() for task in asyncio.all_tasks()
                      if task.get_name().startswith(helper))

    async def main():
        if helper == "amap":
            return [r async for r in impl.amap(item, range(2), limit=2)]
        if helper == "gather":
            return await impl.gather(item(0), item(1), limit=2)
        return [await f async for f in impl.as_completed(
            [item(0), item(1)], limit=2)]

    names = run(main())
    assert names[0] == [f"{helper} worker 1", f"{helper} worker 2"]

    async def one_repr():
        async def show():
            return repr(asyncio.current_task())
        return await impl.gather(show(), limit=1)

    (shown,) = run(one_repr())
    assert "name='gather worker 1'" in shown and "gather worker" in \
        shown.split("coro=")[1]
