"""Cancellation storms: thousands of tasks in groups that share a limiter,
cancelled at random points (waiting for a token, or running), with random
sibling failures and a KeyboardInterrupt from a group's body. Whatever
happens, no more than the limit ever run at once, every task ends, every
token comes back, and nothing is reported to the loop or warned about (the
`run` fixture checks those two)."""

from __future__ import annotations

import asyncio
import random

import pytest

from taskbound import _compat

pytestmark = pytest.mark.storm

SHARED_TOKENS = 5
GROUP_LIMIT = 7


class Boom(Exception):
    pass


class Storm:
    def __init__(self, impl, seed: int, eager: bool = False) -> None:
        self.impl = impl
        # 3.12 before 3.12.9 (gh-128588): a child that fails in its eager
        # first step leaves the group's cancellation of its parent pending
        # past the group, with asyncio.TaskGroup as with ours.
        self.cancellation_leaks = (eager and not _compat.EAGER_DONE_SCHEDULED
                                   and not _compat.UNCANCEL_AFTER_WAIT)
        self.rng = random.Random(seed)
        self.shared = impl.Limiter(SHARED_TOKENS)
        self.live = 0
        self.peak = 0
        self.started = 0
        self.tasks: list = []

    async def work(self, steps: int, fail_at: int) -> None:
        self.live += 1
        self.started += 1
        self.peak = max(self.peak, self.live)
        try:
            for step in range(steps):
                if step == fail_at:
                    raise Boom(step)
                await asyncio.sleep(0)
        finally:
            self.live -= 1

    def item(self, fail_rate: float):
        steps = self.rng.randrange(0, 6)
        fail_at = (self.rng.randrange(steps)
                   if steps and self.rng.random() < fail_rate else -1)
        return self.work(steps, fail_at)

    async def group(self, n: int, fail_rate: float) -> None:
        rng = self.rng
        try:
            async with self.impl.BoundedTaskGroup(
                    GROUP_LIMIT, limiter=self.shared) as tg:
                for _ in range(n):
                    item = self.item(fail_rate)
                    try:
                        if rng.random() < 0.5:
                            task = await tg.spawn(item)
                        else:
                            task = tg.create_task(item)
                    except RuntimeError as error:
                        # An eager child failed inside create_task(): the
                        # group is aborting, as asyncio.TaskGroup would.
                        assert "is shutting down" in str(error)
                        item.close()  # (before 3.13 it is left to us)
                        break
                    self.tasks.append(task)
                    if rng.random() < 0.3:
                        rng.choice(self.tasks).cancel()
                    if rng.random() < 0.2:
                        await asyncio.sleep(0)
        except* Boom:
            pass
        if self.cancellation_leaks:
            try:
                await asyncio.sleep(0)
            except asyncio.CancelledError:
                pass

    async def canceller(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            pending = [t for t in self.tasks[-50:] if not t.done()]
            if pending:
                self.rng.choice(pending).cancel()
            await asyncio.sleep(0)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_storm_of_cancellations_and_failures(impl, run, eager, seed):
    storm = Storm(impl, seed, eager)

    async def main():
        stop = asyncio.Event()
        canceller = asyncio.create_task(storm.canceller(stop))
        for _ in range(3):
            await asyncio.gather(storm.group(500, 0.002),
                                 storm.group(500, 0.002))
        stop.set()
        await canceller
        assert storm.live == 0
        assert all(task.done() for task in storm.tasks)
        assert storm.shared.borrowed_tokens == 0
        assert storm.shared.statistics().waiting == 0

    run(main(), eager=eager)
    # A failure aborts its group, so not every round makes all 500.
    assert 1000 < len(storm.tasks) <= 3000
    cancelled = sum(task.cancelled() for task in storm.tasks)
    assert cancelled > 100
    assert storm.started > 0
    assert 0 < storm.peak <= SHARED_TOKENS


@pytest.mark.parametrize("seed", [1, 2])
def test_keyboard_interrupt_from_the_body_of_a_busy_group(impl, run, eager,
                                                          seed):
    storm = Storm(impl, seed)

    async def main():
        with pytest.raises(KeyboardInterrupt):
            async with impl.BoundedTaskGroup(
                    GROUP_LIMIT, limiter=storm.shared) as tg:
                for _ in range(300):
                    storm.tasks.append(tg.create_task(storm.item(0.0)))
                for _ in range(20):
                    storm.tasks.append(await tg.spawn(storm.item(0.0)))
                await asyncio.sleep(0)
                raise KeyboardInterrupt
        await asyncio.sleep(0)
        assert all(task.done() for task in storm.tasks)
        assert storm.live == 0
        assert storm.shared.borrowed_tokens == 0

    run(main(), eager=eager)
    assert 0 < storm.peak <= SHARED_TOKENS


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_storm_of_weighted_acquisitions(impl, run, seed):
    """Tasks taking 1 to 4 of 6 tokens (acquire(n), hold(n)), cancelled at
    random while they wait or hold, with the total changed and pauses on
    the way: never more than the total held, every token back."""
    rng = random.Random(seed)
    limiter = impl.Limiter(6)
    held = {"now": 0, "peak": 0}

    async def worker(n: int, steps: int) -> None:
        if rng.random() < 0.5:
            await limiter.acquire(n)
        else:
            holding = limiter.hold(n)
            await holding.__aenter__()
        held["now"] += n
        held["peak"] = max(held["peak"], held["now"])
        try:
            for _ in range(steps):
                await asyncio.sleep(0)
        finally:
            held["now"] -= n
            limiter.release(n)

    async def main():
        tasks = []
        for i in range(2000):
            tasks.append(asyncio.create_task(
                worker(rng.randint(1, 4), rng.randrange(4))))
            if rng.random() < 0.3:
                rng.choice(tasks).cancel()
            if rng.random() < 0.01:
                limiter.pause(rng.choice([0, 0.001]))
            if i % 500 == 250:
                limiter.total_tokens = 4        # holders finish over it
            if i % 500 == 400:
                limiter.total_tokens = 6
            if rng.random() < 0.3:
                await asyncio.sleep(0)
        await asyncio.gather(*tasks, return_exceptions=True)
        return (limiter.borrowed_tokens, limiter.statistics().waiting,
                sum(task.cancelled() for task in tasks))

    borrowed, waiting, cancelled = run(main())
    assert (borrowed, waiting) == (0, 0)
    assert cancelled > 100
    assert 4 <= held["peak"] <= 6
