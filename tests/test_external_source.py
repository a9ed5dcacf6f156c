"""The protocol a claim drives on a limiter kept outside the core
(ExternalSource, the base of taskbound.redis), with a toy counting source."""

from __future__ import annotations

import asyncio
import random

import pytest

from toysource import toy_source_type


@pytest.fixture
def Toy(impl):
    return toy_source_type(impl.module.ExternalSource)


def test_a_group_is_bounded_by_an_external_source(impl, run, eager, Toy):
    async def main():
        toy = Toy(3)
        local = impl.Limiter(5)
        running, peak = [0], [0]

        async def work(i):
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            await asyncio.sleep(0.001 * (i % 3))
            running[0] -= 1
            return i

        async with impl.BoundedTaskGroup(limiter=[local, toy]) as tg:
            assert tg.limiters == (toy, local)       # rank: creation order
            tasks = [await tg.spawn(work(i)) for i in range(10)]
            tasks += [tg.create_task(work(i)) for i in range(10, 20)]
        results = [t.result() for t in tasks]
        streamed = [x async for x in impl.amap(work, range(10), limiter=toy)]
        return peak[0], results, streamed, toy.borrowed, len(toy.line)

    assert run(main(), eager=eager) == (3, list(range(20)), list(range(10)),
                                        0, 0)


def test_acquire_and_release_go_through_the_source(impl, run, Toy):
    async def main():
        toy = Toy(1)
        async with toy:
            inside = toy.borrowed
            waiter = asyncio.create_task(toy.acquire())
            await asyncio.sleep(0)
            queued = len(toy.line)
        await waiter
        toy.release()
        return inside, queued, toy.borrowed

    assert run(main()) == (1, 1, 0)


def test_cancellations_leave_every_token_back(impl, run, Toy):
    rng = random.Random(7)

    async def main():
        toy = Toy(4)
        running, peak = [0], [0]

        async def work():
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            try:
                await asyncio.sleep(rng.random() * 0.002)
            finally:
                running[0] -= 1

        async def spawner(tg):
            for _ in range(50):
                await tg.spawn(work())

        async with impl.BoundedTaskGroup(limiter=toy) as tg:
            spawners = [asyncio.create_task(spawner(tg)) for _ in range(6)]
            children = [tg.create_task(work()) for _ in range(100)]
            for _ in range(60):
                await asyncio.sleep(0.0005)
                rng.choice(spawners + children).cancel()
            await asyncio.gather(*spawners, return_exceptions=True)
        return peak[0], toy.borrowed, [f for f in toy.line if not f.done()]

    peak, borrowed, waiting = run(main())
    assert peak <= 4 and borrowed == 0 and waiting == []


@pytest.mark.parametrize("method", ["_try_take", "_enqueue"])
def test_a_failing_source_fails_the_wait_and_keeps_no_token(
        impl, run, Toy, method):
    async def main():
        local = impl.Limiter(2)
        toy = Toy(0 if method == "_enqueue" else 1)
        toy.fail_in = method
        with pytest.raises(ExceptionGroup) as info:
            async with impl.BoundedTaskGroup(limiter=[local, toy]) as tg:
                await tg.spawn(asyncio.sleep(0))
        return info.value.exceptions, local.borrowed_tokens, toy.borrowed

    errors, local_borrowed, toy_borrowed = run(main())
    assert [str(e) for e in errors] == [f"{method} failed"]
    assert (local_borrowed, toy_borrowed) == (0, 0)


def test_a_wait_cancelled_behind_it_gives_its_token_back(impl, run, Toy):
    """The source's token is taken, the next limiter's wait is cancelled:
    the source gets its token back while the cancellation is under way."""
    async def main():
        toy = Toy(2)                 # ranked first: created first
        full = impl.Limiter(1)
        await full.acquire()
        async with impl.BoundedTaskGroup(limiter=[full, toy]) as tg:
            stuck = asyncio.create_task(tg.spawn(asyncio.sleep(0)))
            await asyncio.sleep(0.01)
            during = toy.borrowed
            stuck.cancel()
            with pytest.raises(asyncio.CancelledError):
                await stuck
            child = tg.create_task(asyncio.sleep(0))
            await asyncio.sleep(0.01)
            child.cancel()
        full.release()
        return during, toy.borrowed

    assert run(main()) == (1, 0)


def test_a_failed_wait_behind_it_gives_its_token_back(impl, run, Toy):
    """The first source's token is taken; the wait on the second fails (as
    a Redis limiter's does when the server is gone): the first gets its
    token back while that error is under way, and the error is raised."""
    async def main():
        first, second = Toy(2), Toy(0)
        with pytest.raises(ExceptionGroup) as info:
            async with impl.BoundedTaskGroup(limiter=[first, second]) as tg:
                spawning = asyncio.create_task(tg.spawn(asyncio.sleep(0)))
                await asyncio.sleep(0.01)
                during = first.borrowed
                second.line[0].set_exception(OSError("gone"))
                await spawning
        return during, first.borrowed, info.value.exceptions

    during, after, errors = run(main())
    assert (during, after) == (1, 0)
    assert [str(e) for e in errors] == ["gone"]
