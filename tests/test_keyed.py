"""KeyedLimiter: one Limiter per key, made on first use, the same object
while it has holders, waiters or a pause, forgotten once idle, so memory
follows the keys in use and not every key ever seen."""

from __future__ import annotations

import asyncio
import gc
import math

import pytest


def test_each_key_has_its_own_limiter_of_tokens_per_key(impl, run):
    async def main():
        per_host = impl.KeyedLimiter(2)
        a, b = per_host["a.example"], per_host["b.example"]
        await a.acquire(2)
        await b.acquire()
        seen = (a is per_host["a.example"], a is not b, a.total_tokens,
                a.locked(), b.locked(), sorted(per_host), len(per_host),
                "a.example" in per_host, "c.example" in per_host,
                per_host.statistics())
        a.release(2)
        b.release()
        return seen

    assert run(main()) == (True, True, 2, True, False,
                           ["a.example", "b.example"], 2, True, False,
                           (2, 2, 3, 0))


def test_an_idle_key_is_forgotten(impl, run):
    async def main():
        per_host = impl.KeyedLimiter(1)
        first = per_host["a"]
        await first.acquire()
        first.release()
        in_use = (len(per_host), list(per_host), "a" in per_host)
        return in_use, per_host.statistics()

    in_use, stats = run(main())
    assert in_use == (0, [], False)
    assert stats == (1, 0, 0, 0)


def test_a_key_with_waiters_or_a_pause_keeps_its_limiter(impl, run):
    async def main():
        per_host = impl.KeyedLimiter(1)
        busy = per_host["busy"]
        await busy.acquire()
        waiter = asyncio.create_task(per_host["busy"].acquire())
        await asyncio.sleep(0)
        per_host["paused"].pause(30.0)
        for key in range(1000):             # sweeps come and go
            async with per_host[key]:
                pass
        kept = (per_host["busy"] is busy, sorted(per_host, key=str),
                per_host["busy"].statistics().waiting)
        busy.release()
        await waiter
        busy.release()
        return kept

    assert run(main()) == (True, ["busy", "paused"], 1)


def test_memory_follows_the_keys_in_use_not_every_key_seen(impl, run):
    """100,000 distinct keys, one at a time: the limiters alive stay a
    small multiple of those in use."""
    async def main():
        per_host = impl.KeyedLimiter(4)
        held = per_host["always"]
        await held.acquire()
        peak = 0
        for key in range(100_000):
            limiter = per_host[f"host-{key}"]
            limiter.acquire_nowait()
            limiter.release()
            if key % 5_000 == 0:
                gc.collect()
                peak = max(peak, sum(1 for obj in gc.get_objects()
                                     if isinstance(obj, impl.LimiterType)))
        held.release()
        return peak, len(per_host._limiters)

    peak, kept = run(main())
    assert peak <= 2 * 64 + 16
    assert kept <= 2 * 64


def test_in_a_group_each_task_waits_for_its_own_key(impl, run):
    async def main():
        per_host = impl.KeyedLimiter(2)
        running: dict = {}
        peak: dict = {}

        async def fetch(host):
            async with per_host[host]:
                running[host] = running.get(host, 0) + 1
                peak[host] = max(peak.get(host, 0), running[host])
                await asyncio.sleep(0.001)
                running[host] -= 1

        async with impl.BoundedTaskGroup(limit=10) as tg:
            for i in range(60):
                await tg.spawn(fetch(f"host-{i % 3}"))
        return peak, len(per_host)

    assert run(main()) == ({"host-0": 2, "host-1": 2, "host-2": 2}, 0)


@pytest.mark.parametrize("tokens, error", [
    (0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError),
    ("2", TypeError), (None, TypeError)], ids=repr)
def test_bad_tokens_per_key(impl, tokens, error):
    with pytest.raises(error, match="tokens_per_key"):
        impl.KeyedLimiter(tokens)


def test_unbounded_keys(impl, run):
    async def main():
        per_key = impl.KeyedLimiter(math.inf)
        await per_key["x"].acquire(1000)
        stats = per_key.statistics()
        per_key["x"].release(1000)
        return stats

    assert run(main()) == (math.inf, 1, 1000, 0)
