"""What several test files (and the scripts beside them) share."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import uuid

# The two implementations, by the module each is imported from.
MODULES = {"c": "taskbound._taskbound", "python": "taskbound._pycore"}


def unique_name(prefix: str = "test") -> str:
    """A key prefix no other test (or earlier run) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# Every so many blocks the collection is a full one: what became garbage
# after a block ended (a run's error, freed by the test after the run) is
# frozen with the live objects by the next block, and would otherwise wait
# for the interpreter's rare full collections (on 3.13, asyncio.all_tasks()
# walks every such task).
FULL_COLLECTION_EVERY = 16
_blocks = itertools.count(1)


@contextlib.contextmanager
def collecting_what_it_leaves():
    """Collects, as the block ends, the cycles made in it, so that what they
    held is finalized there (a coroutine never awaited warns then). The
    objects alive before the block are frozen out of the collection
    (gc.freeze): it costs what the block made, not the whole session's heap
    (a full collection per run was most of the suite's time)."""
    if next(_blocks) % FULL_COLLECTION_EVERY == 0:
        try:
            yield
        finally:
            gc.collect()
        return
    gc.freeze()
    try:
        yield
    finally:
        try:
            gc.collect()
        finally:
            gc.unfreeze()


class Gauge:
    """Counts how many items run at once, and which started."""

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0
        self.started: list = []

    async def item(self, key=None, delay=0.0, exc=None):
        self.running += 1
        self.peak = max(self.peak, self.running)
        self.started.append(key)
        try:
            await asyncio.sleep(delay)
            if exc is not None:
                raise exc
            return key
        finally:
            self.running -= 1


@contextlib.contextmanager
def in_use_on_another_loop(limiter, *, waiting: bool = False):
    """Holds one token of ``limiter`` (and, with ``waiting``, queues one
    more task for a token) on a loop of its own, open and not running, for
    the block: the limiter is in use there and cannot move to another loop.
    Gives everything back and closes that loop afterwards."""
    loop = asyncio.new_event_loop()

    async def hold():
        await limiter.acquire()
        if not waiting:
            return None
        waiter = asyncio.ensure_future(limiter.acquire())
        await asyncio.sleep(0)
        return waiter

    try:
        waiter = loop.run_until_complete(hold())
        yield limiter
        if waiter is not None:
            waiter.cancel()
            loop.run_until_complete(asyncio.gather(waiter,
                                                   return_exceptions=True))
        limiter.release()
    finally:
        loop.close()
