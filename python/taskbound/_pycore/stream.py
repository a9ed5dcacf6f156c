"""gather, as_completed and amap: bounded, lazy, run by `limit` workers.

A stream pulls items from its source (a sync or async iterable) only when a
worker is free, runs each item inline in that worker (no Task per item),
each in its own copy of the caller's context, and hands the outcomes to the
consumer in input order or in completion order. A worker does not pull
while `limit` outcomes wait for the consumer, so a slow consumer holds the
source back: at most about 2 x limit items are pulled and not yet consumed.

On the first error (unless errors are returned), on aclose(), on a break
out of the iteration (the iterator is finalized) and on cancellation of the
consumer, the stream cancels and awaits its workers, closes its source and
closes the coroutines it never started.

A worker takes its tokens as a group's child does, with one claim on
every limiter in rank order (taskbound._pycore.core._Claim), and gives them back
once the item is done. A failure of a worker itself (a limiter's acquire,
the loop's task factory) fails the stream like an item's error: the
consumer raises it.

With per-item limiters or costs (item_limiter=, item_cost=) a worker pulls
first and then makes the item's claim. When its tokens are not all free the
item is parked, its claim keeping its places in line, and the worker goes
on with other items: one busy key does not hold back the others. A parked
item whose claim comes to be held is ready, and a worker runs it before it
pulls again. Workers pull only while the values waiting, the items parked
and the pulls under way are fewer than `limit`, so the bound of about
2 x limit items pulled and not consumed stays.
"""

from __future__ import annotations

import asyncio
import collections
import collections.abc
import contextvars
import functools
import inspect
import types
from asyncio import CancelledError

from .._common import (
    BASE_ERRORS,
    check_awaitable,
    close_coroutine,
    costs_in_rank_order,
    limiters_in_rank_order,
)
from .core import _Claim, _TokenSource

__all__ = ["Stream", "StreamIterator"]


@types.coroutine
def _run_in(context, awaitable):
    """Await ``awaitable``, running each of its steps in ``context`` (what a
    Task does for its coroutine), from inside the current task."""
    if isinstance(awaitable, collections.abc.Coroutine):
        iterator = awaitable
    else:
        iterator = awaitable.__await__()
    value, error = None, None
    while True:
        try:
            if error is not None:
                yielded = context.run(iterator.throw, error)
            else:
                yielded = context.run(iterator.send, value)
        except StopIteration as stop:
            return stop.value
        try:
            value, error = (yield yielded), None
        except BaseException as exc:  # thrown in by the task: pass it on
            value, error = None, exc



class _Outcome:
    __slots__ = ("value", "error", "given")

    def __init__(self, value=None, error=None, given=False) -> None:
        self.value = value
        self.error = error
        self.given = given     # a Task or Future the caller gave


class _Parked:
    """An item pulled whose claim is not held yet: it waits in its limiters'
    lines with no worker."""

    __slots__ = ("index", "item", "claim")

    def __init__(self, index, item, claim) -> None:
        self.index = index
        self.item = item
        self.claim = claim


class Stream:
    """The engine shared by the three helpers."""

    def __init__(self, source, make, *, limit, limiter, ordered,
                 return_exceptions, as_futures, strict_input, name,
                 item_limiter, item_cost) -> None:
        self._source = source
        self._make = make                # item -> awaitable; None: the item
        self._strict_input = strict_input  # a bad item fails the stream
        self._limit = limit
        self._limiters = limiters_in_rank_order((), limiter, _TokenSource)
        self._item_limiter = item_limiter  # item -> limiter(s), or None
        self._item_cost = item_cost        # item -> {limiter: n}, or None
        self._claims_per_item = (item_limiter is not None
                                 or item_cost is not None)
        self._parked: dict = {}          # _Parked, in the order parked
        self._ready: collections.deque = collections.deque()  # _Parked, held
        self._pulls = 0                  # pulls under way (claims per item)
        self._ordered = ordered
        self._return_exceptions = return_exceptions
        self._as_futures = as_futures
        self._context = contextvars.copy_context()
        self._loop = None
        self._iterator = None
        self._pull_lock = None
        # The worker tasks not finished, in the order of their start (the
        # order in which they are cancelled).
        self._workers: dict = {}
        self._live = 0                   # workers not finished
        self._name = name                # the helper's, for its workers' tasks
        self._workers_named = 0          # the number in the last one's name
        self._workers_done = None        # a closer's future
        self._pulled = 0                 # index of the next item
        self._emitted = 0                # ordered: index of the next outcome
        self._outcomes: dict | collections.deque
        self._outcomes = {} if ordered else collections.deque()
        self._room: collections.deque = collections.deque()
        self._wakeup = None
        self._exhausted = False
        self._error: BaseException | None = None
        self._raised = False
        self._closed = False

    # -- the consumer's side --

    async def next(self):
        """The next value: a result, an exception (return_exceptions) or a
        done future (as_completed). Raises the stream's first error, or
        StopAsyncIteration at the end."""
        if self._loop is None:
            self._start()
        while True:
            if self._error is not None and not self._raised:
                self._raised = True
                await self.aclose()
                raise self._error
            outcome = self._take()
            if outcome is not None:
                if self._as_futures:
                    return self._as_future(outcome)
                return outcome.value if outcome.error is None \
                    else outcome.error
            if self._closed or (self._exhausted and not self._live):
                await self.aclose()
                raise StopAsyncIteration
            self._wakeup = self._loop.create_future()
            try:
                await self._wakeup
            finally:
                self._wakeup = None

    async def collect(self) -> list:
        """Every value, in order."""
        results = []
        try:
            while True:
                results.append(await self.next())
        except StopAsyncIteration:
            return results
        except CancelledError:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        if self._closed and not self._live and self._iterator is None:
            return
        self._closed = True
        self._cancel_workers()
        try:
            if self._live:
                if self._workers_done is None or self._workers_done.done():
                    self._workers_done = self._loop.create_future()
                await self._workers_done
        finally:
            # Cancelled while the workers end (asyncio.run() cancels what
            # is left), the source is closed all the same.
            await self._close_source()
            self._outcomes.clear()

    def finalize(self) -> None:
        """The iterator was dropped (a break): the workers are cancelled
        now, and a task awaits them and closes the source."""
        if self._loop is None:
            # Dropped before its first step: what it was given never runs.
            if not self._closed and isinstance(self._source, (list, tuple)):
                for item in self._source:
                    close_coroutine(item)
            self._closed = True
            return
        if self._closed and not self._live:
            return
        if not self._loop.is_closed():
            self._closed = True
            self._cancel_workers()
            self._loop.create_task(self.aclose())

    def _cancel_workers(self, spare=None) -> None:
        # Once each: a second cancel() would interrupt an item's own
        # cleanup from the first. One that has not started is left to end
        # in its first step, which finds the stream stopped: cancelled
        # before it starts, a coroutine never runs its finally.
        for task in list(self._workers):
            if task is spare or task.cancelling():
                continue
            if inspect.getcoroutinestate(task.get_coro()) \
                    != inspect.CORO_CREATED:
                task.cancel()
        self._drop_parked()

    def _drop_parked(self) -> None:
        # The stream stops: parked and ready items never run.
        dropped = [*self._parked, *self._ready]
        self._parked.clear()
        self._ready.clear()
        for parked in dropped:
            parked.claim._abandon_unraisable()
            close_coroutine(parked.item)

    def _take(self):
        outcomes = self._outcomes
        if self._ordered:
            outcome = outcomes.pop(self._emitted, None)
            if outcome is None:
                return None
            self._emitted += 1
        elif outcomes:
            outcome = outcomes.popleft()
        else:
            return None
        self._wake_worker()    # one outcome gone: one worker may go on
        return outcome

    def _wake_worker(self) -> None:
        # All of them once nothing is left to run, so that they end.
        finished = self._exhausted and not self._parked and not self._ready
        while self._room:
            future = self._room.popleft()
            if not future.done():
                future.set_result(None)
                if not finished:
                    break

    def _wake_consumer(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    # -- the workers' side --

    def _start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if hasattr(self._source, "__aiter__"):
            self._iterator = self._source.__aiter__()
            self._pull_lock = asyncio.Lock()
        else:
            self._iterator = iter(self._source)
        for _ in range(self._limit or 1):
            try:
                self._add_worker()
            except BaseException as exc:   # the loop's task factory
                self._fail(exc)
                return

    def _add_worker(self) -> None:
        # Counted before create_task(), which may run the worker to its end
        # (an eager task factory) or fail.
        self._live += 1
        work = self._work()
        work.__name__ = work.__qualname__ = f"{self._name} worker"
        self._workers_named += 1
        try:
            task = self._loop.create_task(
                work, name=f"{self._name} worker {self._workers_named}")
        except BaseException:
            work.close()             # never started
            self._worker_ended(None)
            raise
        if not task.done():
            self._workers[task] = None

    def _worker_ended(self, task) -> None:
        """A worker's last step: the stream knows it at once, as the
        consumer or a closer waiting for the last one."""
        self._live -= 1
        self._workers.pop(task, None)
        if not self._live:
            self._wake_consumer()
            if self._workers_done is not None \
                    and not self._workers_done.done():
                self._workers_done.set_result(None)

    def _stopped(self) -> bool:
        return self._exhausted or self._closed or self._error is not None

    async def _work(self) -> None:
        try:
            if self._claims_per_item:
                await self._work_on_items_claimed_each()
            else:
                await self._work_on_items()
        except CancelledError:
            raise
        except BASE_ERRORS:
            # It ends this task as well as the stream: the consumer raises
            # it, and the task's copy is retrieved in the next turn (as
            # asyncio.gather's done callback would), not logged as never
            # retrieved.
            self._loop.call_soon(asyncio.current_task().exception)
            raise
        except BaseException as exc:   # a limiter's failure, or the loop's
            self._fail(exc)
        finally:
            self._worker_ended(asyncio.current_task())

    async def _work_on_items(self) -> None:
        while not self._stopped():
            if self._limit is not None and len(self._outcomes) >= self._limit:
                future = self._loop.create_future()
                self._room.append(future)
                await future
                continue
            claim = await self._take_tokens()
            outcome = None
            try:
                pulled = await self._pull()
                if pulled is None:
                    return
                index, item = pulled
                if self._limit is None and not self._stopped():
                    try:
                        self._add_worker()   # unbounded: one more to pull
                    except BaseException:
                        close_coroutine(item)
                        raise
                outcome = await self._run_holding(claim, item)
            finally:
                # The item's outcome stands: a failure giving its tokens
                # back is reported as unraisable.
                claim.release_after_unraisable(*self._hold_ended(outcome))
            self._deliver(index, outcome)

    async def _work_on_items_claimed_each(self) -> None:
        while not self._closed and self._error is None:
            if self._ready:
                # Held already, and counted as pulled: runs whatever the
                # values waiting (an ordered consumer may wait for it).
                parked = self._ready.popleft()
                self._wake_worker()         # one fewer parked: room to pull
                index, item, claim = parked.index, parked.item, parked.claim
            elif self._may_pull():
                self._pulls += 1
                try:
                    pulled = await self._pull()
                finally:
                    self._pulls -= 1
                if pulled is None:
                    self._wake_worker()
                    continue
                index, item = pulled
                if self._limit is None and not self._stopped():
                    try:
                        self._add_worker()   # unbounded: one more to pull
                    except BaseException:
                        close_coroutine(item)
                        raise
                claim = self._claim_of_item(index, item)
                if claim is None:
                    continue
            elif self._exhausted and not self._parked:
                return
            else:
                future = self._loop.create_future()
                self._room.append(future)
                await future
                continue
            outcome = None
            try:
                outcome = await self._run_holding(claim, item)
            finally:
                claim.release_after_unraisable(*self._hold_ended(outcome))
            self._deliver(index, outcome)

    def _may_pull(self) -> bool:
        if self._exhausted:
            return False
        return self._limit is None or (
            len(self._outcomes) + len(self._parked) + len(self._ready)
            + self._pulls < self._limit)

    def _claim_of_item(self, index, item) -> _Claim | None:
        """The item's claim once held; None when the item is parked, or its
        limiters or costs could not be had (that is its outcome)."""
        try:
            given = (None if self._item_limiter is None
                     else self._item_limiter(item))
            limiters = limiters_in_rank_order(self._limiters, given,
                                              _TokenSource)
            cost = None if self._item_cost is None else self._item_cost(item)
            claim = _Claim(limiters, costs_in_rank_order(limiters, cost))
        except BASE_ERRORS as exc:
            close_coroutine(item)
            self._fail(exc)
            raise
        except BaseException as exc:
            close_coroutine(item)
            self._deliver(index, _Outcome(error=exc))
            return None
        try:
            held = claim.take_tokens(self._loop)
        except BaseException as exc:   # a limiter's failure: the stream's
            close_coroutine(item)
            self._fail(exc)
            return None
        if held:
            return claim
        parked = _Parked(index, item, claim)
        self._parked[parked] = None
        claim.waiter.add_done_callback(
            functools.partial(self._parked_waiter_done, parked))
        return None

    def _parked_waiter_done(self, parked: _Parked, _future) -> None:
        if parked not in self._parked:
            return                          # dropped: the stream stopped
        claim = parked.claim
        try:
            held = claim.resume(self._loop)
        except BaseException as exc:
            del self._parked[parked]
            close_coroutine(parked.item)
            self._fail(exc)
            return
        if not held:
            claim.waiter.add_done_callback(
                functools.partial(self._parked_waiter_done, parked))
            return
        del self._parked[parked]
        self._ready.append(parked)
        self._wake_worker()

    async def _take_tokens(self) -> _Claim:
        claim = _Claim(self._limiters)
        if claim.take_tokens(self._loop):
            return claim
        try:
            while True:
                await claim.waiter
                if claim.resume(self._loop):
                    return claim
        except BaseException:
            claim._abandon_unraisable()
            raise

    async def _pull(self):
        if self._stopped():
            return None
        try:
            if self._pull_lock is None:
                item = next(self._iterator)
            else:
                async with self._pull_lock:
                    if self._stopped():
                        return None
                    item = await self._iterator.__anext__()
        except (StopIteration, StopAsyncIteration):
            self._exhausted = True
            self._wake_consumer()
            return None
        except CancelledError:
            raise
        except BaseException as exc:   # the source itself failed
            self._fail(exc)
            return None
        index = self._pulled
        self._pulled += 1
        return index, item

    async def _run_holding(self, claim, item) -> _Outcome:
        claim.note_start(self._loop)
        return await self._run(item)

    @staticmethod
    def _hold_ended(outcome):
        """How the hold of an item's tokens ended, for release_after(): an
        item that did not run to an outcome is no sample."""
        if outcome is None:
            return None, CancelledError()
        return asyncio.current_task(), outcome.error

    async def _run(self, item) -> _Outcome:
        context = self._context.copy()
        try:
            awaitable = check_awaitable(
                item if self._make is None else context.run(self._make, item))
        except BaseException as exc:
            if self._strict_input:
                close_coroutine(item)
                self._fail(exc)
                return None
            return _Outcome(error=exc)
        if self._as_futures and asyncio.isfuture(awaitable):
            # A given Task or Future: wait for it (never cancel it) and
            # hand it on as it is.
            await asyncio.wait([awaitable])
            return _Outcome(value=awaitable, given=True)
        try:
            value = await _run_in(context, awaitable)
        except CancelledError as exc:
            if self._closed or asyncio.current_task().cancelling():
                raise             # the stream is shutting down
            return _Outcome(error=exc)
        except BASE_ERRORS as exc:
            self._fail(exc)
            raise
        except BaseException as exc:
            return _Outcome(error=exc)
        return _Outcome(value=value)

    def _deliver(self, index, outcome: _Outcome | None) -> None:
        if self._closed or outcome is None:
            return
        if not self._as_futures and outcome.error is not None \
                and not self._return_exceptions:
            self._fail(outcome.error)
            return
        if self._ordered:
            self._outcomes[index] = outcome
        else:
            self._outcomes.append(outcome)
        if not self._ordered or index == self._emitted:
            self._wake_consumer()    # in order, only the next one helps

    def _as_future(self, outcome: _Outcome):
        # Made when the consumer takes it: a failed future made at delivery
        # and never taken (the stream closed first) would log its error as
        # never retrieved.
        if outcome.given:
            return outcome.value
        future = self._loop.create_future()
        if outcome.error is not None:
            future.set_exception(outcome.error)
        else:
            future.set_result(outcome.value)
        return future

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        self._cancel_workers(spare=asyncio.current_task())
        self._wake_consumer()

    async def _close_source(self) -> None:
        iterator = self._iterator
        self._iterator = None
        if iterator is None:
            iterator = iter(self._source) if isinstance(
                self._source, (list, tuple)) else None
            if iterator is None:
                return
        if hasattr(iterator, "aclose"):
            await iterator.aclose()
        elif hasattr(iterator, "close"):
            iterator.close()
        elif isinstance(self._source, (list, tuple)):
            for item in iterator:    # coroutines never started
                close_coroutine(item)


class StreamIterator:
    """What amap() and as_completed() return: an async iterator and an
    async context manager (leaving it closes the stream)."""

    __slots__ = ("_stream", "__weakref__")

    def __init__(self, stream) -> None:
        self._stream = stream

    def __aiter__(self):
        return self

    async def __anext__(self):
        try:
            return await self._stream.next()
        except CancelledError:
            await self._stream.aclose()
            raise

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self._stream.aclose()

    def __del__(self) -> None:
        self._stream.finalize()


