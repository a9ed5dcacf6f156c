"""Fault injection across every API.

Each API (a group's spawn and create_task, acquire(), async with, nested
groups, groups of two and three limiters of every kind, gather,
as_completed, amap in order and in completion order) runs a small workload
with one fault injected at the Nth occurrence of one point: each of the five
operations of an external limiter, the loop's task factory, an item's
first step (an error, or a KeyboardInterrupt), the source iterator (sync and
async), amap's fn (raising, or returning something not awaitable), and a
cancellation of the consumer at the Nth loop iteration. N counts up from 1
until a run completes without the fault having fired.

Every run must end with the injected error where the caller sees it (raised,
inside the documented ExceptionGroup, or, for an error in cleanup that
another error is already unwinding, reported as unraisable); no hang; no
token left borrowed; no "never awaited" or "destroyed pending" warning and
no call of the loop's exception handler (the `run` fixture checks both).
The C core and the reference must give the same outcome for every N
(test_c_and_reference_fail_alike).
"""

from __future__ import annotations

import asyncio
import gc
import sys
import warnings

import pytest

from conftest import Impl, Runner
from toysource import toy_source_type

ITEMS = 5
MAX_RUNS = 60       # a point that still fires after this many is a bug
# A waiter leaves the line (_dequeue), or gives up a token it was handed
# (_pass_on), only when it is cancelled: for those points the consumer is
# cancelled too, at each of these loop iterations in turn.
CANCELLED_AT = range(1, 13)


class Boom(Exception):
    pass


class Injection:
    """One fault: at the nth occurrence of `point`."""

    def __init__(self, point: str, n: int) -> None:
        self.point = point
        self.n = n
        self.count = 0
        self.fired = False

    def hit(self, point: str) -> bool:
        if point != self.point:
            return False
        self.count += 1
        if self.count == self.n:
            self.fired = True
            return True
        return False


def faulty_source_type(base: type) -> type:
    class FaultySource(toy_source_type(base)):
        """The toy counting limiter, failing where the injection says."""

        def __init__(self, total: int, injection: Injection) -> None:
            super().__init__(total)
            self.injection = injection

        def _fault(self, method: str) -> None:
            if self.injection.hit(method):
                raise Boom(method)

        def _try_take(self, loop) -> bool:
            self._bind(loop)
            return super()._try_take(loop)

        # A token coming back is taken back, and then the call fails (a
        # reply lost on the way): the source keeps count, the error is
        # the caller's to see.
        def _pass_on(self) -> None:
            self._hand_on()
            self._fault("_pass_on")

        def _give_back(self) -> None:
            self._hand_on()
            self._fault("_give_back")

    return FaultySource


class Env:
    """The limiters and the items of one run."""

    def __init__(self, impl: Impl, injection: Injection) -> None:
        self.impl = impl
        self.injection = injection
        self.loop = asyncio.get_running_loop()
        self.groups: list = []
        # (Checked here, not by the impl fixture: see one_run.)
        self.local = impl.LimiterType(2)
        # Never binding: its wait is in real time, which would make runs
        # differ; its claims and line are what is tested here.
        self.rate = impl.RateLimiter(1000, burst=100)
        # One token: every workload waits for it, ahead of the local limit
        # or behind it.
        self.external = faulty_source_type(impl.module.ExternalSource)(
            1, injection)

    def group(self, limit=None, *, limiter=None):
        group = self.impl.GroupType(limit, limiter=limiter)
        self.groups.append(group)
        return group

    def borrowed(self) -> int:
        """Tokens still borrowed, of every limiter of the run."""
        limiters = {id(lim): lim for group in self.groups
                    for lim in group.limiters}
        limiters[id(self.local)] = self.local
        return self.external.borrowed + sum(
            getattr(lim, "borrowed_tokens", 0)
            for lim in limiters.values() if lim is not self.external)

    async def work(self, i: int) -> int:
        if self.injection.hit("item"):
            raise Boom(f"item {i}")
        if self.injection.hit("interrupt"):
            raise KeyboardInterrupt(f"item {i}")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return i

    def fn(self, i: int):
        if self.injection.hit("fn"):
            raise Boom(f"fn {i}")
        if self.injection.hit("not_awaitable"):
            return i
        return self.work(i)

    def source(self, items):
        # Fails before it takes the item: a coroutine taken and dropped
        # would be this test's own never-awaited one.
        iterator = iter(items)
        while not self.injection.hit("source"):
            try:
                item = next(iterator)
            except StopIteration:
                return
            yield item
        raise Boom("source")

    async def async_source(self, items):
        for item in items:
            await asyncio.sleep(0)
            if self.injection.hit("async_source"):
                raise Boom("async source")
            yield item

    def coroutines(self):
        return self.source(self.work(i) for i in range(ITEMS))


# ---- the APIs, each a workload on the run's limiters ----

async def spawn(impl, env):
    async with env.group(2, limiter=env.external) as tg:
        tasks = [await tg.spawn(env.work(i)) for i in range(ITEMS)]
    return [t.result() for t in tasks]


async def create_task(impl, env):
    async with env.group(2, limiter=env.external) as tg:
        tasks = [tg.create_task(env.work(i)) for i in range(ITEMS)]
    return [t.result() for t in tasks]


async def acquire(impl, env):
    async def one(i):
        await env.local.acquire()
        try:
            await env.external.acquire()
            try:
                return await env.work(i)
            finally:
                env.external.release()
        finally:
            env.local.release()

    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(one(i)) for i in range(ITEMS)]
    return [t.result() for t in tasks]


async def async_with(impl, env):
    async def one(i):
        async with env.local:
            async with env.external:
                return await env.work(i)

    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(one(i)) for i in range(ITEMS)]
    return [t.result() for t in tasks]


async def nested(impl, env):
    async def inner(i):
        async with env.group(limiter=env.external) as tg:
            first = await tg.spawn(env.work(2 * i))
            second = tg.create_task(env.work(2 * i + 1))
        return [first.result(), second.result()]

    async with env.group(limiter=env.local) as tg:
        tasks = [await tg.spawn(inner(i)) for i in range(3)]
    return [t.result() for t in tasks]


async def two_limiters(impl, env):
    async with env.group(
            limiter=[env.local, env.external]) as tg:
        tasks = [await tg.spawn(env.work(i)) if i % 2
                 else tg.create_task(env.work(i)) for i in range(ITEMS)]
    return [t.result() for t in tasks]


async def three_limiters(impl, env):
    async with env.group(
            limiter=[env.external, env.rate, env.local]) as tg:
        tasks = [await tg.spawn(env.work(i)) if i % 2
                 else tg.create_task(env.work(i)) for i in range(ITEMS)]
    return [t.result() for t in tasks]


async def gather(impl, env):
    return await impl.gather(*[env.work(i) for i in range(ITEMS)], limit=2,
                             limiter=[env.local, env.external])


async def as_completed(impl, env):
    values = []
    async for future in impl.as_completed(
            env.coroutines(), limit=2, limiter=[env.local, env.external]):
        values.append(await future)
    return sorted(values)


async def amap_ordered(impl, env):
    return [v async for v in impl.amap(
        env.fn, env.source(range(ITEMS)), limit=2,
        limiter=[env.local, env.external])]


async def amap_unordered(impl, env):
    return sorted([v async for v in impl.amap(
        env.fn, env.source(range(ITEMS)), limit=2,
        limiter=[env.local, env.external], ordered=False)])


async def amap_async_source(impl, env):
    return [v async for v in impl.amap(
        env.fn, env.async_source(range(ITEMS)), limit=2,
        limiter=[env.local, env.external])]


async def amap_item_limiters(impl, env):
    # Each item waits for the external source's one token, parked; odd
    # ones take the local limiter too.
    return sorted([v async for v in impl.amap(
        env.fn, env.source(range(ITEMS)), limit=3, ordered=False,
        item_limiter=lambda i: [env.local, env.external] if i % 2
        else env.external)])


async def as_completed_item_limiters(impl, env):
    values = []
    async for future in impl.as_completed(
            env.coroutines(), limit=3,
            item_limiter=lambda coro: [env.local, env.external]):
        values.append(await future)
    return sorted(values)


APIS = {f.__name__: f for f in (
    spawn, create_task, acquire, async_with, nested, two_limiters,
    three_limiters, gather, as_completed, amap_ordered, amap_unordered,
    amap_async_source, amap_item_limiters, as_completed_item_limiters)}

OPERATIONS = ["_try_take", "_enqueue", "_dequeue", "_pass_on", "_give_back"]
EVERYWHERE = OPERATIONS + ["task_factory", "item", "interrupt", "cancel"]
POINTS = {name: list(EVERYWHERE) for name in APIS}
POINTS["as_completed"] += ["source"]
POINTS["amap_ordered"] += ["source", "fn", "not_awaitable"]
POINTS["amap_unordered"] += ["source", "fn", "not_awaitable"]
POINTS["amap_async_source"] += ["async_source", "fn", "not_awaitable"]
POINTS["amap_item_limiters"] += ["source", "fn", "not_awaitable"]
POINTS["as_completed_item_limiters"] += ["source"]
CASES = [(api, point) for api, points in POINTS.items() for point in points]

# What the caller must see of each fault: its error's type name.
SEEN_AS = {"interrupt": "KeyboardInterrupt", "cancel": "CancelledError",
           "not_awaitable": "TypeError"}


def shape(error):
    if isinstance(error, BaseExceptionGroup):
        return (type(error).__name__,
                tuple(shape(e) for e in error.exceptions))
    return (type(error).__name__, str(error))


def mentions(outcome, name: str) -> bool:
    if isinstance(outcome, (tuple, list)):
        return any(mentions(part, name) for part in outcome)
    return outcome == name


def one_run(impl: Impl, loop_kind: str, api: str, point: str, n: int,
            cancel_at=None):
    """Runs the API's workload with the nth `point` failing (and the
    consumer cancelled at loop iteration `cancel_at`); returns whether the
    fault fired and the outcome (raised or returned, and what was reported
    as unraisable)."""
    injection = Injection(point, n)
    env_of_run = []

    def task_factory(loop, coro, **kwargs):
        if injection.hit("task_factory"):
            coro.close()      # as a well-behaved factory would
            raise Boom("task factory")
        kwargs.pop("eager_start", None)
        return asyncio.Task(coro, loop=loop, **kwargs)

    async def main():
        loop = asyncio.get_running_loop()
        env = Env(impl, injection)
        env_of_run.append(env)
        if point == "task_factory":
            loop.set_task_factory(task_factory)
        if point == "cancel" or cancel_at is not None:
            consumer = asyncio.current_task()
            ticks = [0]

            def tick():
                ticks[0] += 1
                if consumer.done():
                    return
                if (injection.hit("cancel") if point == "cancel"
                        else ticks[0] == cancel_at):
                    consumer.cancel()
                else:
                    loop.call_soon(tick)
            loop.call_soon(tick)
        try:
            async with asyncio.timeout(3):
                return await APIS[api](impl, env)
        finally:
            loop.set_task_factory(None)

    unraisable = []
    hook = sys.unraisablehook
    sys.unraisablehook = lambda u: unraisable.append(shape(u.exc_value))
    try:
        try:
            outcome = ("returned", repr(Runner(loop_kind)(main())))
        except AssertionError:
            raise
        except BaseException as error:
            outcome = ("raised", shape(error))
    finally:
        sys.unraisablehook = hook
    env = env_of_run[0]
    assert not mentions(outcome, "TimeoutError"), (api, point, n, outcome)
    # A KeyboardInterrupt that escapes the loop again while asyncio.run()
    # cancels what is left (a group's exit re-raises it, as asyncio's
    # TaskGroup does) makes asyncio leave the other tasks pending. A token
    # such a task holds is its own, as an asyncio.Semaphore would be; every
    # other one must be back.
    abandoned = [t for t in asyncio.all_tasks(env.loop) if not t.done()]
    assert not abandoned or point == "interrupt", (api, point, n, abandoned)
    assert env.borrowed() <= len(abandoned), (api, point, n, outcome)
    assert not any(not f.done() for f in env.external.line), \
        (api, point, n, outcome)
    # What else is reported comes from tasks asyncio abandoned, closed
    # when the collector finds them, at no moment in particular.
    noise = [u for u in unraisable if not mentions(u, "Boom")]
    assert not noise or abandoned, (api, point, n, noise)
    unraisable = [u for u in unraisable if mentions(u, "Boom")]
    if abandoned:
        close_abandoned(abandoned, (api, point, n))
    if injection.fired:
        seen = SEEN_AS.get(point, "Boom")
        assert mentions(outcome, seen) or mentions(unraisable, seen), \
            (api, point, n, outcome, unraisable)
    else:
        expected = "returned" if cancel_at is None else "raised"
        assert outcome[0] == expected, (api, point, n, outcome)
    return injection.fired, (outcome, tuple(unraisable))


# Outcomes by (implementation, loop, api, point): the comparison of the
# two implementations reuses the runs of the tests of each.
OUTCOMES: dict = {}


def close_abandoned(tasks, case) -> None:
    """Closes the coroutines of tasks asyncio left pending, now rather
    than whenever the collector finds them (in some later test). What
    they never started must be closed with them."""
    hook = sys.unraisablehook
    sys.unraisablehook = lambda u: None     # their GeneratorExit noise
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for task in tasks:
                try:
                    task.get_coro().close()
                except BaseException:
                    # Before 3.15 a group's exit wraps the GeneratorExit,
                    # as asyncio's TaskGroup does; close() then raises it.
                    pass
            del tasks
            gc.collect()
    finally:
        sys.unraisablehook = hook
    never_awaited = [str(w.message) for w in caught
                     if "never awaited" in str(w.message)]
    assert not never_awaited, (case, never_awaited)


def matrix(impl: Impl, loop_kind: str, api: str, point: str):
    """The outcome of every run, from n = 1 until the fault no longer
    fires (for each moment of cancellation, where the point needs one),
    and how many runs it fired in."""
    key = (impl.name, loop_kind, api, point)
    if key not in OUTCOMES:
        OUTCOMES[key] = run_matrix(impl, loop_kind, api, point)
    return OUTCOMES[key]


def run_matrix(impl: Impl, loop_kind: str, api: str, point: str):
    outcomes, fired_in = [], 0
    moments = CANCELLED_AT if point in ("_dequeue", "_pass_on") else [None]
    for cancel_at in moments:
        for n in range(1, MAX_RUNS + 1):
            fired, outcome = one_run(impl, loop_kind, api, point, n,
                                     cancel_at)
            outcomes.append(outcome)
            fired_in += fired
            if not fired:
                break
        else:
            raise AssertionError(
                f"{api}/{point} still fires after {MAX_RUNS} runs")
    return outcomes, fired_in


@pytest.mark.parametrize("api,point", CASES)
def test_a_fault_reaches_the_caller_and_leaves_nothing_behind(
        impl, run, api, point):
    outcomes, fired_in = matrix(impl, run.loop_kind, api, point)
    assert fired_in > 0, outcomes      # the workload reaches the point


@pytest.mark.differential
@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
@pytest.mark.parametrize("api,point", CASES)
def test_c_and_reference_fail_alike(loop_kind, api, point):
    c, python = (matrix(Impl(name), loop_kind, api, point)[0]
                 for name in ("c", "python"))
    assert c == python
