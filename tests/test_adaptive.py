"""AdaptiveLimiter: its total follows the hold times and overload errors of
its holders, within its bounds, from every way of holding a token; the
algorithms' arithmetic on windows given by hand."""

import asyncio
import math

import pytest

from taskbound import AIMD, Algorithm, Gradient2, Probe, Window
from taskbound._benchadaptive import Server


def run_backlog(impl, limiter, server, requests: int, timeout=0.2):
    """A group with `limiter` through `requests` calls to the simulated
    server; a 503 or a timeout is marked as an overload."""
    async def one():
        try:
            answer = server.submit()
            async with asyncio.timeout(timeout):
                await answer
        except (ConnectionError, TimeoutError):
            limiter.mark_overload()

    async def main():
        async with impl.BoundedTaskGroup(limiter=limiter) as tg:
            for _ in range(requests):
                await tg.spawn(one())
    return main()


@pytest.mark.parametrize("algorithm", [AIMD(timeout=0.015), Gradient2(),
                                       Probe()],
                         ids=["aimd", "gradient2", "probe"])
def test_the_limit_settles_near_the_servers_capacity(impl, timed_run,
                                                     algorithm):
    totals = []
    limiter = impl.AdaptiveLimiter(
        1, max_tokens=100, algorithm=algorithm,
        on_change=lambda old, new: totals.append(new))
    server = None

    async def main():
        nonlocal server
        server = Server(asyncio.get_running_loop(), 8, 0.0, seed=1,
                        mean=0.01)
        await run_backlog(impl, limiter, server, 1500)

    timed_run(main())
    stats = limiter.statistics()
    assert stats.samples == 1500
    assert totals[0] == 2 and max(totals) < 40
    # Up from 1 to about the capacity (8), not to the server's queue (40).
    settled = totals[len(totals) // 2:]
    assert 6 <= min(settled) and max(settled) <= 20, totals
    assert stats.drops <= 15


def test_the_limit_stays_within_min_and_max(impl, timed_run):
    totals = []

    async def main():
        limiter = impl.AdaptiveLimiter(
            4, min_tokens=3, max_tokens=6, algorithm=AIMD(),
            on_change=lambda old, new: totals.append(new))

        async def fine():
            await asyncio.sleep(0.001)

        async def overloaded():
            await asyncio.sleep(0.001)
            raise TimeoutError

        async for _ in impl.amap(lambda f: f(), [fine] * 200,
                                 limiter=limiter):
            pass
        top = limiter.total_tokens
        async for _ in impl.amap(lambda f: f(), [overloaded] * 200,
                                 limiter=limiter, return_exceptions=True):
            pass
        return top, limiter.total_tokens, limiter.statistics()

    top, bottom, stats = timed_run(main())
    assert (top, bottom) == (6, 3)
    assert set(totals) <= {3, 4, 5, 6} and 6 in totals and 3 in totals
    assert stats.samples == 400 and stats.drops == 200
    assert 3.0 <= stats.limit < 4.0


def test_hold_times_are_the_samples(impl, timed_run):
    async def main():
        limiter = impl.AdaptiveLimiter(10, algorithm=AIMD())

        async def work(seconds):
            await asyncio.sleep(seconds)

        async with impl.BoundedTaskGroup(limiter=limiter) as tg:
            for i in range(10):
                await tg.spawn(work(0.1 if i % 2 else 0.3))
        return limiter.statistics()

    stats = timed_run(main())
    assert stats.samples == 10 and stats.drops == 0
    if timed_run.loop_kind == "virtual":
        assert stats.latency == pytest.approx(0.2)
    else:
        assert 0.199 <= stats.latency < 0.26     # (uvloop: milliseconds)


def test_hold_times_on_a_real_clock_are_the_loops(impl, run):
    """On a loop's real clock (on asyncio's loop the C core reads it
    without calling loop.time()), each hold's sample spans what its
    holder measured with loop.time() inside it, and not much more."""
    async def main():
        loop = asyncio.get_running_loop()
        limiter = impl.AdaptiveLimiter(4, algorithm=AIMD())
        inside = []

        async def work(seconds):
            started = loop.time()
            await asyncio.sleep(seconds)
            inside.append(loop.time() - started)

        async with impl.BoundedTaskGroup(limiter=limiter) as tg:
            for i in range(9):
                await tg.spawn(work(0.02 * (1 + i % 3)))
        async with limiter:
            started = loop.time()
            await asyncio.sleep(0.03)
            inside.append(loop.time() - started)
        return limiter.statistics(), inside

    stats, inside = run(main())
    # One window (MIN_WINDOW samples), the async with's last.
    assert stats.samples == 10
    mean = sum(inside) / len(inside)
    # uvloop's clock counts milliseconds: a read may be one behind.
    assert mean - 0.002 <= stats.latency <= mean + 0.02


def test_cancelled_holds_are_no_samples(impl, run):
    async def main():
        limiter = impl.AdaptiveLimiter(5, algorithm=AIMD())
        hold = asyncio.Event()

        async def child():
            await hold.wait()

        # Group children cancelled with their group.
        with pytest.raises(ExceptionGroup):
            async with impl.BoundedTaskGroup(limiter=limiter) as tg:
                for _ in range(3):
                    await tg.spawn(child())
                await asyncio.sleep(0)
                raise ZeroDivisionError

        # acquire() released mid-cancellation, and an async with left by a
        # cancellation.
        async def by_hand():
            await limiter.acquire()
            try:
                await hold.wait()
            finally:
                limiter.release()

        async def in_block():
            async with limiter:
                await hold.wait()

        tasks = [asyncio.create_task(by_hand()),
                 asyncio.create_task(in_block())]
        await asyncio.sleep(0)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

        # Stream items cancelled as the stream is closed.
        stream = impl.amap(lambda _: hold.wait(), range(3), limiter=limiter)
        first = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0)
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        await stream.aclose()
        # One ordinary hold, for contrast.
        async with limiter:
            pass
        return limiter.statistics()

    stats = run(main())
    assert (stats.samples, stats.drops, stats.borrowed_tokens) == (1, 0, 0)


@pytest.mark.parametrize("overload, drops", [
    (None, 2),                          # default: timeouts, connections
    ((KeyError,), 1),
    (ValueError, 1),
    (lambda error: "slow" in str(error), 1),
])
def test_which_errors_are_drops(impl, run, overload, drops):
    errors = [TimeoutError("slow"), ConnectionResetError(), KeyError(),
              ValueError(), None]

    async def main():
        options = {} if overload is None else {"overload": overload}
        limiter = impl.AdaptiveLimiter(5, algorithm=AIMD(), **options)

        async def item(error):
            if error is not None:
                raise error

        async for _ in impl.amap(item, errors, limiter=limiter,
                                 return_exceptions=True):
            pass
        return limiter.statistics()

    stats = run(main())
    assert (stats.samples, stats.drops) == (5, drops)


def test_mark_overload_makes_the_hold_a_drop(impl, run):
    async def main():
        limiter = impl.AdaptiveLimiter(5, algorithm=AIMD())
        async with limiter:
            limiter.mark_overload()
        await limiter.acquire()
        limiter.mark_overload()
        limiter.release()
        async with limiter.hold(2):
            pass                        # not marked: a plain sample

        async def child():
            limiter.mark_overload()

        async with impl.BoundedTaskGroup(limiter=limiter) as tg:
            await tg.spawn(child())
        # A mark is used up by the hold it was made in.
        async with limiter:
            pass
        return limiter.statistics()

    stats = run(main())
    assert (stats.samples, stats.drops) == (5, 3)


def test_mark_overload_outside_a_task_is_an_error(impl):
    limiter = impl.AdaptiveLimiter(2)
    with pytest.raises(RuntimeError, match="from a task"):
        limiter.mark_overload()


def test_shared_by_groups_streams_and_tasks(impl, run):
    async def main():
        limiter = impl.AdaptiveLimiter(3, algorithm=AIMD())
        peak = 0

        async def work(_=None):
            nonlocal peak
            peak = max(peak, limiter.borrowed_tokens)
            await asyncio.sleep(0.001)

        async with impl.BoundedTaskGroup(limiter=limiter) as first, \
                impl.BoundedTaskGroup(limit=10) as second:
            for _ in range(20):
                await first.spawn(work())
                await second.spawn(work(), limiter=limiter)
            values = [v async for v in impl.amap(work, range(20),
                                                 limiter=limiter)]
        await impl.gather(*(work() for _ in range(20)), limiter=limiter)
        return limiter.statistics(), peak, len(values)

    stats, peak, values = run(main())
    assert values == 20
    assert stats.samples == 80 and stats.borrowed_tokens == 0
    assert 3 <= peak <= 3 + 80 // 10    # the limit grows from 3 by +1s


def test_setting_the_total_by_hand(impl):
    limiter = impl.AdaptiveLimiter(5, min_tokens=2, max_tokens=8)
    limiter.total_tokens = 7
    assert (limiter.total_tokens, limiter.statistics().limit) == (7, 7.0)
    for bad, error in [(9, ValueError), (1, ValueError), (2.5, TypeError)]:
        with pytest.raises(error):
            limiter.total_tokens = bad
    assert limiter.total_tokens == 7


@pytest.mark.parametrize("kwargs, error", [
    ({"initial": 0}, ValueError),
    ({"initial": 1.5}, TypeError),
    ({"initial": 5, "max_tokens": 4}, ValueError),
    ({"initial": 2, "min_tokens": 3}, ValueError),
    ({"initial": 2, "min_tokens": True}, TypeError),
    ({"initial": 2, "algorithm": "aimd"}, TypeError),
    ({"initial": 2, "overload": "TimeoutError"}, TypeError),
    ({"initial": 2, "overload": (TimeoutError, 3)}, TypeError),
    ({"initial": 2, "on_change": 3}, TypeError),
])
def test_bad_arguments(impl, kwargs, error):
    with pytest.raises(error):
        impl.AdaptiveLimiter(**kwargs)


@pytest.mark.parametrize("make", [
    lambda: AIMD(backoff=1.0), lambda: AIMD(backoff=0), lambda: AIMD(
        increase=-1), lambda: Gradient2(tolerance=0.9),
    lambda: Gradient2(long_window=0), lambda: Gradient2(smoothing=0),
    lambda: Gradient2(queue_size=math.nan), lambda: Gradient2(
        drop_budget=2), lambda: Probe(gain=0), lambda: Probe(gain=0.5),
    lambda: Probe(climb=1.0), lambda: Probe(precision=math.nan),
    lambda: Probe(backoff=1.0), lambda: Probe(drop_budget=-0.1),
    lambda: Probe(gain="0.1")])
def test_bad_algorithm_parameters(make):
    with pytest.raises((ValueError, TypeError)):
        make()


def window(samples=20, drops=0, mean=0.1, least=0.05, in_flight=10):
    return Window(samples, drops, mean, least, in_flight)


def test_aimd_arithmetic():
    aimd = AIMD(increase=2, backoff=0.5, timeout=1.0)
    assert aimd.update(10, window()) == 12
    assert aimd.update(10, window(in_flight=4)) == 10     # not the bound
    assert aimd.update(10, window(drops=1)) == 5
    assert aimd.update(10, window(mean=1.5)) == 5


def test_gradient2_arithmetic():
    g = Gradient2(tolerance=1.0, smoothing=0.5, queue_size=2)
    g.reset()
    # No queue: latency at its long-term level, the limit grows by the
    # allowance (smoothed).
    assert g.update(10, window(mean=0.1)) == pytest.approx(11.0)
    # Twice the latency: the long-term one (in its warm-up, the mean of
    # the two) is 0.75 of it.
    assert g.update(10, window(mean=0.2)) == pytest.approx(
        10 * 0.5 + (10 * 0.75 + 2) * 0.5)
    assert g.long_latency == pytest.approx(0.15)
    # Far above it: the gradient's floor, 0.5.
    assert g.update(10, window(mean=1.0)) == pytest.approx(
        10 * 0.5 + (10 * 0.5 + 2) * 0.5)
    # A burst of drops is over the budget at once.
    assert g.update(10, window(drops=10)) == pytest.approx(9.0)


def test_each_limiter_works_on_its_own_copy_of_the_algorithm(impl):
    algorithm = Gradient2()
    first = impl.AdaptiveLimiter(2, algorithm=algorithm)
    second = impl.AdaptiveLimiter(2, algorithm=algorithm)
    assert first.algorithm is not algorithm
    assert first.algorithm is not second.algorithm
    assert repr(first.algorithm) == repr(algorithm)


def test_an_algorithm_of_ones_own(impl, run):
    class Halves(Algorithm):
        def update(self, limit, window):
            return limit / 2

    async def main():
        limiter = impl.AdaptiveLimiter(8, algorithm=Halves())
        for _ in range(10):             # one window: MIN_WINDOW samples
            async with limiter:
                pass
        return limiter.total_tokens

    assert run(main()) == 4


def real_clock_stretch(timed_run) -> float:
    """How much slower the simulated server is on a real clock: a busy
    machine's lateness of a few milliseconds reads as a queue at 10 ms a
    request (a cut the virtual clock never makes), far less at 30."""
    return 1.0 if timed_run.loop_kind == "virtual" else 3.0


def run_with_a_change(impl, timed_run, capacity: int, change,
                      requests: int):
    """A Probe-driven backlog against the simulated server (10 ms a
    request, times the real clock's stretch, as are all times here) whose
    `change(server)` comes at 0.5 s; returns the limiter, when the change
    came and each (time in unstretched seconds, new total) of the limiter."""
    stretch = real_clock_stretch(timed_run)
    changes = []
    limiter = impl.AdaptiveLimiter(
        capacity, max_tokens=100, algorithm=Probe(),
        on_change=lambda old, new: changes.append(
            (asyncio.get_running_loop().time() / stretch, new)))
    changed_at = None

    async def main():
        loop = asyncio.get_running_loop()
        server = Server(loop, capacity, 0.0, seed=1, mean=0.01 * stretch)

        def at_half_a_second():
            nonlocal changed_at
            changed_at = loop.time() / stretch
            change(server)
        loop.call_later(0.5 * stretch, at_half_a_second)
        await run_backlog(impl, limiter, server, requests, 0.2 * stretch)

    timed_run(main())
    return limiter, changed_at, changes


def test_probe_follows_a_capacity_that_halves(impl, timed_run):
    # Gradient2 and AIMD settle 40-60% above a capacity that halved (the
    # bench's targets); Probe comes to it within 20 round trips and stays.
    _, halved_at, changes = run_with_a_change(
        impl, timed_run, 16, lambda server: server.set_capacity(8), 2400)
    before = [total for when, total in changes if when < halved_at]
    after = [(when - halved_at, total) for when, total in changes
             if when >= halved_at]
    assert 14 <= before[-1] <= 20, changes
    assert any(total <= 9 for when, total in after if when <= 0.2), after
    late = [total for when, total in after if when > 0.3]
    assert late and all(7 <= total <= 10 for total in late), after


def test_probe_takes_a_slower_server_for_a_slower_server(impl, timed_run):
    # Service that becomes twice as slow for good at the same capacity
    # raises latency as a queue would; the cut it makes must not stay.
    def slow_down(server):
        server.mu += math.log(2.0)
    limiter, slowed_at, changes = run_with_a_change(
        impl, timed_run, 8, slow_down, 1800)
    # Back at the capacity (a probe's step may pass it for a while on a
    # real clock's jitter), not at the cut's 4-5.
    late = sorted(total for when, total in changes if when > slowed_at + 1.5)
    assert late and 7 <= late[len(late) // 2] <= 9, changes
    assert 7 <= limiter.total_tokens <= 10, changes


def probe_round(probe, limit, mean, windows=3, drops=0):
    """Feeds Probe a round of windows at `limit`, their means spread by 1%
    around `mean`; returns the limit it asks for after them."""
    for i in range(windows):
        spread = (-0.01, 0.01, 0.0)[i % 3]
        new = probe.update(limit, window(
            samples=20, drops=drops, mean=mean * (1 + spread),
            in_flight=int(limit)))
        if new != limit:
            return new
    return limit


def skip_moved(probe, limit):
    # A move ignores the holds granted before it: up to the old limit's.
    assert probe.update(limit, window(samples=30, in_flight=int(limit))) \
        == limit


def test_probe_arithmetic():
    probe = Probe()
    # Climbs by 1.5 a round while L / R keeps up with the limit.
    assert probe_round(probe, 10, 0.1) == pytest.approx(15)
    skip_moved(probe, 15)
    assert probe_round(probe, 15, 0.1) == pytest.approx(22.5)
    skip_moved(probe, 22.5)
    # 1.5 x the limit, 1.5 x the latency: no more delivered, so back to
    # where the latency says the knee is.
    assert probe_round(probe, 22.5, 0.15) == pytest.approx(15)
    skip_moved(probe, 15)
    assert probe.long_latency == pytest.approx(0.1)
    # At the base, no queue: a probe 5% above it...
    assert probe_round(probe, 15, 0.1) == pytest.approx(15.75)
    skip_moved(probe, 15.75)
    # ...whose latency rises as much: the base stays...
    assert probe_round(probe, 15.75, 0.105) == pytest.approx(15)
    skip_moved(probe, 15)
    # ...and the next one goes 5% below it.
    assert probe_round(probe, 15, 0.1) == pytest.approx(14.25)
    skip_moved(probe, 14.25)
    assert probe_round(probe, 14.25, 0.1) == pytest.approx(15)
    skip_moved(probe, 15)
    # Two windows at twice the latency the base predicts: a capacity that
    # halved, cut to at once.
    assert probe_round(probe, 15, 0.2, windows=2) == pytest.approx(7.5)
    # Drops past the budget of the last 2000 samples back off.
    assert probe.update(10, window(samples=400, drops=200)) == pytest.approx(9)
    # A climb goes on while L / R grows by over 0.35 of the limit's growth
    # (here 20% for the limit's 50%, which half would stop), and stops
    # under it (15% here).
    for latency, stops in ((0.125, False), (0.13, True)):
        probe = Probe()
        assert probe_round(probe, 10, 0.1) == pytest.approx(15)
        skip_moved(probe, 15)
        new = probe_round(probe, 15, latency)
        assert new == (pytest.approx(15 * 0.1 / latency) if stops else
                       pytest.approx(22.5))


def test_probe_cuts_where_the_load_is_under_the_limit(impl, timed_run):
    # 12 callers under a limit of about 16 when the capacity falls to 6:
    # the limit is not the bound, but 12 in flight queue at the server.
    limiter = impl.AdaptiveLimiter(4, max_tokens=100, algorithm=Probe())
    settled = None
    stretch = real_clock_stretch(timed_run)

    async def main():
        nonlocal settled
        server = Server(asyncio.get_running_loop(), 16, 0.0, seed=1,
                        mean=0.01 * stretch)
        await run_backlog(impl, limiter, server, 800, 0.2 * stretch)
        settled = limiter.total_tokens
        server.set_capacity(6)

        async def caller():
            for _ in range(100):
                async with limiter:
                    try:
                        await asyncio.wait_for(server.submit(),
                                               0.2 * stretch)
                    except (ConnectionError, TimeoutError):
                        limiter.mark_overload()
        async with asyncio.TaskGroup() as tg:
            for _ in range(12):
                tg.create_task(caller())

    timed_run(main())
    assert 14 <= settled <= 20
    assert 5 <= limiter.total_tokens <= 8
