"""Per-item limiters and costs in the streaming helpers: amap, as_completed
and gather take item_limiter= (item -> a limiter, a sequence of them, or
None) and item_cost= (item -> a mapping limiter -> tokens). An item whose
tokens are busy is parked, and the workers go on with items of other keys:
no head-of-line blocking across keys. At most `limit` items run, at most
about 2 x limit are pulled and not consumed, parked items of one limiter
start in arrival order, and a stream that stops early gives back every
token and closes what it never ran."""

from __future__ import annotations

import asyncio
import inspect

import pytest

HOT = "hot"


class Traffic:
    """Items of several keys through a stream of `limit`, with what the
    stream did recorded: pulls, consumption, running items, start order."""

    def __init__(self, keys, limit) -> None:
        self.keys = keys               # the key of each item, in input order
        self.limit = limit
        self.pulled = 0
        self.consumed = 0
        self.most_unconsumed = 0
        self.running = 0
        self.most_running = 0
        self.started: list = []

    def items(self):
        for index, key in enumerate(self.keys):
            self.pulled += 1
            self.most_unconsumed = max(self.most_unconsumed,
                                       self.pulled - self.consumed)
            yield index, key

    async def run_item(self, item, until=None):
        index, key = item
        self.started.append(index)
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            if key == HOT and until is not None:
                await until.wait()
            await asyncio.sleep(0)
            return index
        finally:
            self.running -= 1


def key_of(item):
    return item[1]


def test_a_saturated_key_does_not_hold_back_the_others(impl, run):
    """The hot key's items wait on an event set only once every other item
    has run: with head-of-line blocking the stream would hang. (As many hot
    items in a row as the park holds, limit - 1, and one running.)"""
    async def main():
        per_key = impl.KeyedLimiter(1)
        keys = [HOT] * 4 + [f"cold{i}" for i in range(40)] + [HOT] * 3
        traffic = Traffic(keys, limit=4)
        hot_free = asyncio.Event()
        cold = sum(key != HOT for key in keys)
        values = []

        async def fetch(item):
            value = await traffic.run_item(item, hot_free)
            if sum(traffic.keys[i] != HOT for i in traffic.started) == cold:
                hot_free.set()
            return value

        async with asyncio.timeout(10):
            async for value in impl.amap(
                    fetch, traffic.items(), limit=4, ordered=False,
                    item_limiter=lambda item: per_key[key_of(item)]):
                traffic.consumed += 1
                values.append(value)
        return traffic, values, len(per_key)

    traffic, values, keys_kept = run(main())
    cold = [i for i, key in enumerate(traffic.keys) if key != HOT]
    assert sorted(values[:len(cold)]) == cold, "a hot item came out first"
    assert sorted(values) == list(range(len(traffic.keys)))
    assert traffic.most_running <= traffic.limit
    assert traffic.most_unconsumed <= 2 * traffic.limit
    assert keys_kept == 0


def test_ordered_amap_keeps_input_order_with_a_slow_key(impl, run):
    async def main():
        per_key = impl.KeyedLimiter(1)
        keys = [HOT if i % 5 == 0 else f"cold{i}" for i in range(40)]
        traffic = Traffic(keys, limit=4)

        async def fetch(item):
            if key_of(item) == HOT:
                await asyncio.sleep(0.002)
            return await traffic.run_item(item)

        values = []
        async with asyncio.timeout(10):
            async for value in impl.amap(
                    fetch, traffic.items(), limit=4,
                    item_limiter=lambda item: per_key[key_of(item)]):
                traffic.consumed += 1
                values.append(value)
        return traffic, values

    traffic, values = run(main())
    assert values == list(range(40))
    assert traffic.most_running <= traffic.limit
    assert traffic.most_unconsumed <= 2 * traffic.limit


def test_the_bound_holds_with_one_hot_key(impl, run):
    """Every item of one key, which takes one at a time: the workers park
    items while one runs, and stop pulling when the park is full."""
    async def main():
        per_key = impl.KeyedLimiter(1)
        traffic = Traffic([HOT] * 50, limit=5)
        async with asyncio.timeout(10):
            values = [value async for value in impl.amap(
                traffic.run_item, traffic.items(), limit=5,
                item_limiter=lambda item: per_key[key_of(item)])
                if not setattr(traffic, "consumed", traffic.consumed + 1)]
        return traffic, values

    traffic, values = run(main())
    assert values == list(range(50))
    assert traffic.started == list(range(50)), "parked out of arrival order"
    assert traffic.most_running == 1
    assert traffic.most_unconsumed <= 2 * traffic.limit


def test_parked_items_of_a_key_start_in_arrival_order(impl, run):
    async def main():
        per_key = impl.KeyedLimiter(2)
        keys = [("a", "b", "c")[i % 3] for i in range(60)]
        traffic = Traffic(keys, limit=8)
        async with asyncio.timeout(10):
            values = [value async for value in impl.amap(
                traffic.run_item, traffic.items(), limit=8, ordered=False,
                item_limiter=lambda item: per_key[key_of(item)])]
        return traffic, values

    traffic, values = run(main())
    assert sorted(values) == list(range(60))
    for key in "abc":
        of_key = [i for i in traffic.started if traffic.keys[i] == key]
        assert of_key == sorted(of_key)


def test_item_costs_are_taken_of_stream_and_item_limiters(impl, run):
    """Sizes against a byte budget given to the stream and a per-key cap of
    3 tokens, each item taking 1 or 2 of it: neither is ever exceeded."""
    async def main():
        budget = impl.Limiter(10)
        per_key = impl.KeyedLimiter(3)
        items = [(i, ("x", "y")[i % 2], 1 + i % 7) for i in range(40)]
        most = {"budget": 0, "x": 0, "y": 0}
        taken = {"x": 0, "y": 0}

        async def download(item):
            _, key, size = item
            taken[key] += 1 + size % 2
            most["budget"] = max(most["budget"], budget.borrowed_tokens)
            most[key] = max(most[key], taken[key])
            try:
                await asyncio.sleep(0.001 * size)
            finally:
                taken[key] -= 1 + size % 2
            return size

        async with asyncio.timeout(10):
            sizes = [size async for size in impl.amap(
                download, items, limit=6, limiter=budget,
                item_limiter=lambda item: per_key[item[1]],
                item_cost=lambda item: {budget: item[2],
                                        per_key[item[1]]: 1 + item[2] % 2})]
        return sizes, most, [item[2] for item in items]

    sizes, most, expected = run(main())
    assert sizes == expected
    assert 7 <= most["budget"] <= 10
    assert most["x"] <= 3 and most["y"] <= 3


def test_gather_and_as_completed_take_item_limiters(impl, run):
    async def main():
        per_key = impl.KeyedLimiter(1)
        most = {}
        holding = {}

        async def job(key, i):
            holding[key] = holding.get(key, 0) + 1
            most[key] = max(most.get(key, 0), holding[key])
            await asyncio.sleep(0)
            holding[key] -= 1
            return key, i

        def key_of_job(coro):
            return per_key[coro.cr_frame.f_locals["key"]]

        jobs = [job("ab"[i % 2], i) for i in range(10)]
        gathered = await impl.gather(*jobs, limit=4, item_limiter=key_of_job)
        jobs = [job("ab"[i % 2], i) for i in range(10)]
        completed = []
        async for future in impl.as_completed(jobs, limit=4,
                                              item_limiter=key_of_job):
            completed.append(future.result())
        return gathered, sorted(completed), most

    gathered, completed, most = run(main())
    expected = [("ab"[i % 2], i) for i in range(10)]
    assert gathered == expected
    assert completed == sorted(expected)
    assert most == {"a": 1, "b": 1}


def test_with_no_limit_every_item_runs_within_its_keys_cap(impl, run):
    async def main():
        per_key = impl.KeyedLimiter(2)
        keys = [("a", "b")[i % 2] for i in range(30)]
        traffic = Traffic(keys, limit=None)
        values = [value async for value in impl.amap(
            traffic.run_item, traffic.items(), ordered=False,
            item_limiter=lambda item: per_key[key_of(item)])]
        return traffic, values

    traffic, values = run(main())
    assert sorted(values) == list(range(30))
    assert traffic.most_running <= 4


def test_an_async_source_with_a_hot_key(impl, run):
    async def main():
        per_key = impl.KeyedLimiter(1)
        hot_free = asyncio.Event()

        async def items():
            for i in range(30):
                await asyncio.sleep(0)
                yield i, HOT if i < 3 else f"cold{i}"

        async def fetch(item):
            if item[1] == HOT:
                await hot_free.wait()
            return item[0]

        values = []
        async with asyncio.timeout(10):
            async for value in impl.amap(
                    fetch, items(), limit=3, ordered=False,
                    item_limiter=lambda item: per_key[key_of(item)]):
                values.append(value)
                if len(values) == 27:
                    hot_free.set()
        return values

    values = run(main())
    assert sorted(values[:27]) == list(range(3, 30))
    assert sorted(values[27:]) == [0, 1, 2]


def test_idle_keys_are_forgotten_over_many_distinct_keys(impl, run):
    """20,000 distinct keys through a stream of 10: the keyed limiter keeps
    only keys in use (swept as it grows), none once the stream is done."""
    async def main():
        per_key = impl.KeyedLimiter(1)
        most_kept = 0

        async def fetch(key):
            nonlocal most_kept
            most_kept = max(most_kept, len(per_key))
            await asyncio.sleep(0)
            return key

        count = 0
        async for _ in impl.amap(fetch, range(20_000), limit=10,
                                 ordered=False,
                                 item_limiter=lambda key: per_key[key]):
            count += 1
        return count, most_kept, len(per_key)

    count, most_kept, kept_at_end = run(main())
    assert count == 20_000
    assert most_kept <= 1_000
    assert kept_at_end == 0


def bad_item_limiters(impl):
    """(item_limiter, item_cost, error type, message part) for item 2."""
    big = impl.Limiter(3)
    return [
        (lambda i: "nope" if i == 2 else None, None, TypeError, "limiter"),
        (lambda i: [big, 5] if i == 2 else None, None, TypeError, "int"),
        (None, lambda i: {big: 1} if i == 2 else None, ValueError,
         "does not take"),
        (lambda i: big, lambda i: [1] if i == 2 else None, TypeError,
         "mapping"),
        (lambda i: big, lambda i: {big: 4 if i == 2 else 1}, ValueError,
         "total_tokens"),
        (lambda i: big, lambda i: {big: 0 if i == 2 else 1}, ValueError,
         ">= 1"),
        (lambda i: None if i != 2 else 1 // 0, None, ZeroDivisionError,
         "division"),
        (None, lambda i: {}[i] if i == 2 else None, KeyError, "2"),
    ]


@pytest.mark.parametrize("case", range(8))
def test_a_bad_item_limiter_or_cost_is_that_items_error(impl, run, case):
    async def main():
        item_limiter, item_cost, error_type, part = bad_item_limiters(
            impl)[case]

        async def job(i):
            await asyncio.sleep(0)
            return i

        # Returned in its place with return_exceptions: the others run.
        values = [value async for value in impl.amap(
            job, range(5), limit=2, item_limiter=item_limiter,
            item_cost=item_cost, return_exceptions=True)]
        assert isinstance(values[2], error_type), values[2]
        assert part in str(values[2])
        assert values[:2] + values[3:] == [0, 1, 3, 4]

        # Raised by gather otherwise, each coroutine closed or run.
        jobs = [job(i) for i in range(5)]
        with pytest.raises(error_type):
            await impl.gather(*jobs, limit=2,
                              item_limiter=_on_index(item_limiter, jobs),
                              item_cost=_on_index(item_cost, jobs))
        return [inspect.getcoroutinestate(coro) for coro in jobs]

    assert set(run(main())) == {inspect.CORO_CLOSED}


def _on_index(fn, jobs):
    """`fn` of an item's index, for a coroutine of `jobs`."""
    return None if fn is None else (lambda coro: fn(jobs.index(coro)))


@pytest.mark.parametrize("bad", [5, "key", object()])
def test_item_limiter_and_item_cost_must_be_callable(impl, run, bad):
    async def main():
        for name in ("item_limiter", "item_cost"):
            with pytest.raises(TypeError, match=name):
                impl.amap(asyncio.sleep, [0], **{name: bad})
            with pytest.raises(TypeError, match=name):
                impl.as_completed([], **{name: bad})
            coro = asyncio.sleep(0)
            with pytest.raises(TypeError, match=name):
                await impl.gather(coro, **{name: bad})
            assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED

    run(main())


@pytest.mark.parametrize("end", ["break", "error", "cancel"])
def test_a_stream_ending_early_drops_its_parked_items(impl, run, end):
    """Items parked on a busy key when the stream ends are never run: their
    coroutines are closed, their places in line given up, every token
    (held for items ready to run, too) back."""
    async def main():
        per_key = impl.KeyedLimiter(1)
        shared = impl.Limiter(100)
        release = asyncio.Event()
        ran = []

        async def job(i):
            ran.append(i)
            if i == 0:
                await release.wait()
            elif i == 3 and end == "error":
                raise ZeroDivisionError
            return i

        jobs = [job(i) for i in range(8)]
        key = {id(coro): "a" if i in (0, 1, 2) else f"k{i}"
               for i, coro in enumerate(jobs)}
        stream = impl.as_completed(
            jobs, limit=4, limiter=shared,
            item_limiter=lambda coro: per_key[key[id(coro)]])

        async def consume():
            async with stream:
                async for future in stream:
                    future.result()
                    if end == "break" and len(ran) > 3:
                        break
        consumer = asyncio.create_task(consume())
        if end == "cancel":
            while len(ran) < 4:
                await asyncio.sleep(0)
            consumer.cancel()
        with pytest.raises((ZeroDivisionError, asyncio.CancelledError)) \
                if end != "break" else _nothing():
            await consumer
        await asyncio.sleep(0)
        states = [inspect.getcoroutinestate(coro) for coro in jobs]
        return states, shared.statistics(), per_key["a"].statistics(), ran

    states, shared_stats, key_stats, ran = run(main())
    assert set(states) == {inspect.CORO_CLOSED}
    assert 1 not in ran and 2 not in ran
    assert shared_stats.borrowed_tokens == 0 and shared_stats.waiting == 0
    assert key_stats.borrowed_tokens == 0 and key_stats.waiting == 0


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return False


def test_a_rate_limited_key_parks_its_items_until_their_start(impl, run):
    """A RateLimiter per item: the items of other keys run while a limited
    one waits for its next start."""
    async def main():
        loop = asyncio.get_running_loop()
        slow = impl.RateLimiter(20)       # one start per 50 ms
        order = []

        async def job(item):
            order.append(item)
            await asyncio.sleep(0)
            return item

        began = loop.time()
        values = [value async for value in impl.amap(
            job, ["s0", "s1", "f0", "f1", "f2", "s2", "f3"], limit=4,
            ordered=False,
            item_limiter=lambda item: slow if item[0] == "s" else None)]
        return order, values, loop.time() - began

    order, values, elapsed = run(main())
    assert sorted(values) == sorted(order)
    assert [item for item in order if item[0] == "f"] == ["f0", "f1", "f2",
                                                          "f3"]
    assert order.index("f3") < order.index("s1")
    assert elapsed >= 0.09
