"""The pure-Python reference implementation of Limiter and BoundedTaskGroup.

It is the readable statement of the semantics and the oracle the C core is
tested against; ``TASKBOUND_PURE_PYTHON=1`` makes ``import taskbound`` use it.
Its structure follows the C core on purpose (a claim of tokens, a child
coroutine that returns them in its task's last step) so that both schedule
the same work in the same loop iterations.
"""

from __future__ import annotations

import collections
import collections.abc
import inspect
import itertools
import math
import types
from asyncio import CancelledError, current_task, get_running_loop, sleep
from asyncio.events import _get_running_loop

from . import _deadlock
from ._common import (
    GroupStatistics,
    LimiterStatistics,
    RateLimiterStatistics,
    WouldBlock,
    check_burst,
    check_limit,
    check_positive,
    check_total_tokens,
    is_base_error,
    limiters_in_rank_order,
    waiting_stand_in,
    write_unraisable,
)
from ._compat import (
    BARE_GENERATOR_EXIT,
    CLOSES_REFUSED_CORO,
    CREATE_TASK_KWARGS,
    EAGER_DONE_SCHEDULED,
    UNCANCEL_AFTER_WAIT,
    add_to_awaited_by,
    discard_from_awaited_by,
)

__all__ = ["BoundedTaskGroup", "Limiter", "RateLimiter"]

# Every limiter gets a rank when it is created; a task takes its tokens in
# rank order, so two groups naming the same limiters in any order cannot each
# hold one token while waiting for the other's.
_ranks = itertools.count()


class _TokenSource:
    """What Limiter and RateLimiter share: a FIFO line of waiter futures, the
    event loop they are bound to, and a rank in the global order."""

    def __new__(cls, *args, **kwargs):
        # The rank comes with the object, as in C, so that a subclass whose
        # __init__ never calls ours gets the clear error of _bind().
        self = super().__new__(cls)
        self._rank = next(_ranks)
        self._loop = None
        self._initialized = False
        return self

    def __init__(self) -> None:
        # Futures of the tasks waiting, in arrival order. A waiter is woken
        # with the result True when it is handed its token (which counts as
        # taken from that moment, so nobody can barge in between), or False
        # when a group aborts its claim.
        self._waiters: collections.deque = collections.deque()
        self._initialized = True

    async def acquire(self) -> None:
        claim = _Claim((self,))
        loop = get_running_loop()
        if not claim.try_take(loop):
            await _wait_for_claim(claim, loop)
        self._note_holder()

    def acquire_nowait(self) -> None:
        if not self._try_take(get_running_loop()):
            raise WouldBlock(f"no token of {self!r} is free")
        self._note_holder()

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()

    # -- the protocol a claim uses --

    def _bind(self, loop) -> None:
        if not self._initialized:
            raise RuntimeError(f"{type(self).__name__}.__init__() was not "
                               "called on this object")
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError(f"{self!r} is bound to a different event loop")

    def _enqueue(self, loop):
        future = loop.create_future()
        self._waiters.append(future)
        return future

    def _dequeue(self, future) -> None:
        try:
            self._waiters.remove(future)
        except ValueError:
            pass

    def _leave_line(self, future) -> None:
        """Takes ``future`` out of the line. That cannot fail for its claim:
        a failure of a subclass's _dequeue is reported as unraisable."""
        try:
            self._dequeue(future)
        except BaseException as error:
            write_unraisable(error)

    def _withdraw(self, future) -> None:
        """The owner of ``future`` gives up: pass its token on if it has one."""
        if future.done() and not future.cancelled():
            if future.exception() is not None:
                # Failed by deadlock detection: handed nothing.
                self._leave_line(future)
            elif future.result():
                self._pass_on()
            return
        self._leave_line(future)
        try:
            future.cancel()
        except RuntimeError:
            pass        # its loop is closed: out of line is enough

    def _prune(self) -> None:
        # Waiters cancelled from outside stay queued until their task runs;
        # they must not make a free source look busy.
        waiters = self._waiters
        while waiters and waiters[0].done():
            waiters.popleft()

    def _waiting(self) -> int:
        return sum(1 for future in self._waiters if not future.done())

    # -- who holds what, for deadlock detection (see _deadlock) --

    def _note_holder(self) -> None:
        pass

    def _deadlock_state(self):
        return None


class Limiter(_TokenSource):
    """A FIFO counting limiter, shareable by any number of groups on one loop."""

    def __init__(self, total_tokens: int | float) -> None:
        self._total = check_total_tokens(total_tokens)
        self._borrowed = 0
        # Tokens taken with acquire()/acquire_nowait(), by task; groups'
        # children hold theirs in their claims.
        self._holders: dict = {}
        self._unattributed = 0      # taken outside any task
        self._lost_track = False    # a task released what it never took
        super().__init__()

    def __repr__(self) -> str:
        return (f"<Limiter total_tokens={self._total} "
                f"borrowed={self._borrowed} waiting={self._waiting()}>")

    @property
    def total_tokens(self) -> int | float:
        return self._total

    @total_tokens.setter
    def total_tokens(self, value: int | float) -> None:
        self._total = check_total_tokens(value)
        self._wake()

    @property
    def borrowed_tokens(self) -> int:
        return self._borrowed

    @property
    def available_tokens(self) -> int | float:
        if self._total == math.inf:
            return math.inf
        return max(0, self._total - self._borrowed)

    def statistics(self) -> LimiterStatistics:
        return LimiterStatistics(self._total, self._borrowed, self._waiting())

    def locked(self) -> bool:
        """True when an acquire would have to wait."""
        self._prune()
        return self._borrowed >= self._total or bool(self._waiters)

    def release(self) -> None:
        if self._borrowed <= 0:
            raise RuntimeError(
                f"release() called on {self!r}, which has no borrowed tokens")
        task = current_task() if _get_running_loop() is not None else None
        count = self._holders.get(task, 0)
        if count > 1:
            self._holders[task] = count - 1
        elif count == 1:
            del self._holders[task]
        elif self._unattributed > 0:
            self._unattributed -= 1
        else:
            self._lost_track = True
        self._give_back()

    def _give_back(self) -> None:
        """A token comes back (from a claim, or from release())."""
        if self._borrowed <= 0:
            raise RuntimeError(
                f"release() called on {self!r}, which has no borrowed tokens")
        self._borrowed -= 1
        if self._borrowed == 0:
            # Nothing is held: whoever was recorded is stale.
            self._holders.clear()
            self._unattributed = 0
            self._lost_track = False
        self._wake()

    def _note_holder(self) -> None:
        task = current_task()
        if task is None:
            self._unattributed += 1
        else:
            self._holders[task] = self._holders.get(task, 0) + 1

    def _deadlock_state(self):
        if (self._total == math.inf or self._borrowed < self._total
                or self._lost_track or self._unattributed):
            return None
        waiters = [future for future in self._waiters if not future.done()]
        if not waiters:
            return None
        return self._loop, self._borrowed, self._holders, waiters

    def _fail_waiters(self, futures, message: str) -> None:
        for future in futures:
            self._dequeue(future)
            if not future.done():
                future.set_exception(_deadlock.DeadlockError(message))

    def _try_take(self, loop) -> bool:
        """Take a token if one is free and nobody is queued ahead."""
        self._bind(loop)
        self._prune()
        if self._waiters or self._borrowed >= self._total:
            return False
        self._borrowed += 1
        return True

    _pass_on = _give_back

    def _wake(self) -> None:
        waiters = self._waiters
        while waiters and self._borrowed < self._total:
            future = waiters.popleft()
            if not future.done():
                try:
                    future.set_result(True)
                except RuntimeError:
                    continue    # its loop is closed: it can never run
                self._borrowed += 1


class RateLimiter(_TokenSource):
    """Starts at most ``rate`` acquisitions per ``per`` seconds, with bursts
    of up to ``burst`` (GCRA: a token bucket kept as one timestamp).
    ``release()`` is a no-op: a start, once made, is spent."""

    def __init__(self, rate: float, per: float = 1.0, burst: int = 1) -> None:
        self._rate = check_positive("rate", rate)
        self._per = check_positive("per", per)
        self._burst = check_burst(burst)
        # The theoretical arrival time of the next start: a start at `now`
        # is allowed when now >= tat - tolerance.
        self._tat = -math.inf
        self._timer = None
        super().__init__()

    def __repr__(self) -> str:
        return (f"<RateLimiter rate={self._rate!r} per={self._per!r} "
                f"burst={self._burst} waiting={self._waiting()}>")

    @property
    def rate(self) -> float:
        return self._rate

    @rate.setter
    def rate(self, value: float) -> None:
        rate = check_positive("rate", value)
        # The last start stays where it was; the next one follows it at
        # the new interval.
        old_interval = self._interval()
        self._rate = rate
        self._tat += self._interval() - old_interval
        if self._loop is not None:
            self._schedule()

    @property
    def per(self) -> float:
        return self._per

    @property
    def burst(self) -> int:
        return self._burst

    def statistics(self) -> RateLimiterStatistics:
        return RateLimiterStatistics(self._rate, self._per, self._burst,
                                     self._waiting())

    def locked(self) -> bool:
        self._prune()
        if self._waiters:
            return True
        return self._loop is not None and not self._due(self._loop.time())

    def release(self) -> None:
        """A rate limiter has nothing to give back."""

    def _give_back(self) -> None:
        pass

    def _interval(self) -> float:
        return self._per / self._rate

    def _next_start(self) -> float:
        return self._tat - self._interval() * (self._burst - 1)

    def _due(self, now: float) -> bool:
        # A microsecond early counts: loop clocks are floats (uvloop's counts
        # milliseconds), so a timer set for a start can wake to a time that
        # rounds a hair below it.
        return now + 1e-6 >= self._next_start()

    def _start(self, now: float) -> None:
        self._tat = max(self._tat, now) + self._interval()

    def _try_take(self, loop) -> bool:
        self._bind(loop)
        self._prune()
        now = loop.time()
        if self._waiters or not self._due(now):
            return False
        self._start(now)
        return True

    def _enqueue(self, loop):
        future = super()._enqueue(loop)
        if len(self._waiters) == 1:
            self._schedule()
        return future

    def _dequeue(self, future) -> None:
        head = bool(self._waiters) and self._waiters[0] is future
        super()._dequeue(future)
        if head:
            self._schedule()

    def _pass_on(self) -> None:
        # A waiter was handed a start but gave up: the next one gets it.
        self._prune()
        if self._waiters:
            self._waiters.popleft().set_result(True)
            self._schedule()
        else:
            self._tat -= self._interval()

    def _schedule(self) -> None:
        """Arm the timer for the first waiter's start."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._prune()
        if self._waiters:
            self._timer = self._loop.call_at(self._next_start(), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = self._loop.time()
        first = True
        self._prune()
        # The timer may fire a clock tick early: the first waiter goes
        # anyway, and _start() keeps the schedule from there.
        while self._waiters and (first or self._due(now)):
            self._start(now)
            self._waiters.popleft().set_result(True)
            first = False
            self._prune()
        self._schedule()


class ExternalSource(_TokenSource):
    """The base of limiters whose tokens live outside this process
    (taskbound.redis). A claim drives it through the same methods as any
    token source; the subclass implements them and keeps its own line:

    - ``_try_take(loop) -> bool``: take a token now, without waiting;
    - ``_enqueue(loop) -> future``: queue a waiter, whose result is True once
      it holds a token (False: the claim aborted);
    - ``_dequeue(future)``: the waiter leaves the line, unserved;
    - ``_pass_on()``: a waiter handed a token gave up: pass it on;
    - ``_give_back()``: a token comes back.

    ``_bind(loop)`` and ``_loop`` come from the base, as for every source.
    """

    def __new__(cls, *args, **kwargs):
        self = super().__new__(cls)
        self._initialized = True   # nothing of the base's to set up
        return self

    def release(self) -> None:
        self._give_back()

    def _try_take(self, loop) -> bool:
        raise NotImplementedError

    def _pass_on(self) -> None:
        raise NotImplementedError

    def _give_back(self) -> None:
        raise NotImplementedError


class _FirstError:
    """Cleanup that keeps going: each ``with`` block's error is caught;
    the first is raised by ``raise_it()``, the others are unraisable (as
    the C core's claim_release does)."""

    __slots__ = ("error",)

    def __init__(self) -> None:
        self.error = None

    def __enter__(self):
        return self

    def __exit__(self, typ, exc, tb) -> bool:
        if exc is not None:
            if self.error is None:
                self.error = exc
            else:
                write_unraisable(exc)
        return True

    def raise_it(self) -> None:
        if self.error is not None:
            raise self.error


class _Claim:
    """One token of each of several limiters, taken in rank order.

    ``try_take`` takes what is free and, at the first limiter that is busy,
    queues a waiter future at once (so the claim keeps its place in line
    from the moment it is made). ``resume`` continues after that future is
    done; ``abandon`` gives everything back.
    """

    __slots__ = ("limiters", "held", "waiter", "abort_error")

    def __init__(self, limiters) -> None:
        self.limiters = limiters
        self.held = 0
        self.waiter = None
        self.abort_error = None

    def try_take(self, loop) -> bool:
        limiters = self.limiters
        try:
            while self.held < len(limiters):
                limiter = limiters[self.held]
                if not limiter._try_take(loop):
                    self.waiter = limiter._enqueue(loop)
                    return False
                self.held += 1
        except BaseException:
            self._release_unraisable()
            raise
        return True

    def resume(self, loop) -> bool:
        """The waiter is done: count its token and go on; True when all held."""
        future = self.waiter
        self.waiter = None
        try:
            handed = future.result()
        except BaseException:
            # Cancelled from outside (or failed by deadlock detection):
            # nothing was handed; leave the line, give back what is held.
            self.limiters[self.held]._leave_line(future)
            self._release_unraisable()
            raise
        if handed:
            self.held += 1
        if self.abort_error is not None:
            error, self.abort_error = self.abort_error, None
            self._release_unraisable()
            raise error
        return self.try_take(loop)

    def abort(self, error: BaseException) -> None:
        """Make a waiting claim fail with ``error`` when its owner next runs."""
        self.abort_error = error
        future = self.waiter
        if future is not None:
            self.limiters[self.held]._leave_line(future)
            if not future.done():
                future.set_result(False)

    def abandon(self) -> None:
        """Gives everything back, whatever the state; raises the first
        error of doing so (the others are unraisable)."""
        errors = _FirstError()
        future = self.waiter
        if future is not None:
            self.waiter = None
            with errors:
                self.limiters[self.held]._withdraw(future)
        self.abort_error = None
        with errors:
            self.release()
        errors.raise_it()

    def release(self) -> None:
        """Gives back every token held, last taken first. Keeps going after
        an error, and raises the first one (the others are unraisable)."""
        held, self.held = self.held, 0
        errors = _FirstError()
        for limiter in reversed(self.limiters[:held]):
            with errors:
                limiter._give_back()
        errors.raise_it()

    # For an error already under way, which stays the one raised:
    def _release_unraisable(self) -> None:
        try:
            self.release()
        except BaseException as exc:
            write_unraisable(exc)

    def _abandon_unraisable(self) -> None:
        try:
            self.abandon()
        except BaseException as exc:
            write_unraisable(exc)


async def _wait_for_claim(claim: _Claim, loop) -> None:
    try:
        while True:
            _deadlock.on_block(claim.limiters[claim.held], claim.waiter)
            await claim.waiter
            if claim.resume(loop):
                return
    except BaseException:
        claim._abandon_unraisable()
        raise


def _iterator_of(awaitable):
    """What a child drives: a coroutine itself, or what ``__await__`` gives."""
    if isinstance(awaitable, collections.abc.Coroutine):
        return awaitable
    if inspect.isawaitable(awaitable):
        if isinstance(awaitable, types.GeneratorType):
            return awaitable  # a generator-based coroutine
        return awaitable.__await__()
    raise TypeError(f"an awaitable was expected, got {awaitable!r}")


def _close(iterator) -> None:
    close = getattr(iterator, "close", None)
    if close is not None:
        close()


def _check_keywords(method: str, kwargs) -> None:
    """Before 3.14 a TaskGroup's create_task takes only name= and context=;
    from 3.14 any keyword, which the loop's create_task checks. A refused
    keyword leaves the coroutine as it was, as a failed call does, so that
    the caller may retry without it."""
    if CREATE_TASK_KWARGS:
        return
    for key in kwargs:
        if key not in ("name", "context"):
            raise TypeError(
                f"{method}() got an unexpected keyword argument '{key}'")


class _Child(collections.abc.Coroutine):
    """The coroutine a group's Task runs: it waits for the tokens if it has
    to, drives the user's awaitable, and returns the tokens inside the
    task's own last step, however the task ends.

    It passes the user coroutine's name, code and frame through, so the
    task's repr, stack and call graph look as if it ran the user's coroutine
    itself; while it waits for its tokens, they show that wait instead.
    """

    __slots__ = ("_group", "_target", "_iterator", "_claim", "_waiting",
                 "_task", "_finished", "_failed", "_stand_in")

    def __init__(self, group, target, iterator, claim, waiting) -> None:
        self._group = group
        self._target = target
        self._iterator = iterator
        self._claim = claim
        self._waiting = waiting
        self._task = None
        self._finished = False
        self._failed = False
        self._stand_in = None

    def send(self, value):
        return self._step(value, None)

    def throw(self, typ, val=None, tb=None):
        return self._step(None, _exception_of(typ, val, tb))

    def close(self) -> None:
        if self._finished:
            return
        if self._waiting:
            self._claim.abandon()
            _close(self._iterator)
            self._group._child_finished(self, None)
            return
        try:
            _close(self._iterator)
        finally:
            self._group._child_finished(self, None)

    def __await__(self):
        return self

    def __iter__(self):
        return self

    def __next__(self):
        return self._step(None, None)

    def __del__(self):
        # A task destroyed before its coroutine finished (its loop closed):
        # the tokens still go back and the user's coroutine is closed.
        if not self._finished:
            self.close()

    def _step(self, value, exc):
        if self._finished:
            raise RuntimeError("cannot reuse already awaited coroutine")
        if self._waiting:
            try:
                future = self._wait_for_tokens(exc)
            except BaseException as error:
                _close(self._iterator)
                self._group._child_finished(self, error)
                raise
            if future is not None:
                return future
            value = exc = None
        iterator = self._iterator
        try:
            if exc is not None:
                return iterator.throw(exc)
            if value is None and not hasattr(iterator, "send"):
                return next(iterator)
            return iterator.send(value)
        except StopIteration:
            self._group._child_finished(self, None)
            raise
        except BaseException as error:
            self._group._child_finished(self, error)
            raise

    def _wait_for_tokens(self, exc):
        """One step of waiting: the future to yield, or None once all are held."""
        claim = self._claim
        if exc is not None:
            claim._abandon_unraisable()
            raise exc
        loop = self._group._loop
        try:
            while True:
                future = claim.waiter
                busy = claim.limiters[claim.held]
                if (not future.done() and self._group._exit_waiter is not None
                        and _parent_may_hold(self._group, busy)):
                    # Once the exit waits for this child, its wait may be
                    # what completes a deadlock; it then fails at once.
                    _deadlock.on_block(busy, future)
                if not future.done():
                    future._asyncio_future_blocking = True
                    return future
                if claim.resume(loop):
                    self._waiting = False
                    self._stand_in = None
                    self._group._running += 1
                    return None
        except BaseException:
            claim._abandon_unraisable()
            raise

    def _holds(self, limiter) -> bool:
        """Whether this child holds a token of ``limiter``."""
        claim = self._claim
        return not self._finished and any(
            lim is limiter for lim in claim.limiters[:claim.held])

    # What asyncio reads to describe a task's coroutine (its repr, stack and
    # call graph): the user's coroutine's name always; its code, frame and
    # what it awaits once it runs, and before that the stand-in's, which
    # shows the wait for tokens instead of a coroutine that has not started.
    @property
    def __name__(self):
        return getattr(self._target, "__name__", type(self._target).__name__)

    def __getattr__(self, name):
        # A class body cannot hold a property named __qualname__.
        if name == "__qualname__":
            return getattr(self._target, "__qualname__", self.__name__)
        raise AttributeError(name)

    def _described(self):
        if not self._waiting or self._finished:
            return self._target
        if self._stand_in is None:
            claim = self._claim
            self._stand_in = waiting_stand_in(claim.limiters[claim.held])
        return self._stand_in

    @property
    def cr_code(self):
        described = self._described()
        return getattr(described, "cr_code",
                       getattr(described, "gi_code", None))

    @property
    def cr_frame(self):
        described = self._described()
        return getattr(described, "cr_frame",
                       getattr(described, "gi_frame", None))

    @property
    def cr_running(self):
        described = self._described()
        return getattr(described, "cr_running",
                       getattr(described, "gi_running", False))

    @property
    def cr_await(self):
        described = self._described()
        return getattr(described, "cr_await",
                       getattr(described, "gi_yieldfrom", None))


def _parent_may_hold(group, limiter) -> bool:
    """Whether the group's parent may hold a token of ``limiter``: only
    then is a waiting child worth a deadlock check (checking every child of
    a create_task() flood would walk all tasks once per task)."""
    parent = group._parent_task
    if parent is None:
        return False
    if getattr(limiter, "_holders", None):
        return True
    coro = parent.get_coro()
    return isinstance(coro, _Child) and coro._holds(limiter)


def _exception_of(typ, val=None, tb=None):
    """The exception that throw(typ[, val[, tb]]) raises."""
    if isinstance(typ, BaseException):
        exc = typ
    else:
        exc = typ() if val is None else typ(val)
    if tb is not None:
        exc = exc.with_traceback(tb)
    return exc


class _Spawn(collections.abc.Coroutine):
    """What spawn() returns: its coroutine, which also closes the user's
    coroutine when it is thrown into or closed before it has started (a
    coroutine's body, and so its cleanup, never runs in that case)."""

    __slots__ = ("_run", "_target")

    def __init__(self, run, target) -> None:
        self._run = run
        self._target = target

    def _close_target_if_unstarted(self) -> None:
        if inspect.getcoroutinestate(self._run) == inspect.CORO_CREATED:
            _close(self._target)

    def send(self, value):
        return self._run.send(value)

    def throw(self, typ, val=None, tb=None):
        self._close_target_if_unstarted()
        return self._run.throw(_exception_of(typ, val, tb))

    def close(self) -> None:
        self._close_target_if_unstarted()
        self._run.close()

    def __await__(self):
        return self

    def __iter__(self):
        return self

    def __next__(self):
        return self._run.send(None)


class BoundedTaskGroup:
    """An asyncio.TaskGroup that runs at most ``limit`` tasks at once and
    takes a token of each shared limiter before a task may start."""

    def __init__(self, limit: int | None = None, *, limiter=None) -> None:
        own = ()
        if limit is not None:
            limit = check_limit(limit)
            own = (Limiter(limit),)
        self._limit = limit
        self._limiters = limiters_in_rank_order(own, limiter, _TokenSource)
        self._entered = False
        self._exiting = False
        self._aborting = False
        self._cancel_on_enter = False
        self._cancel_called = False
        self._loop = None
        self._parent_task = None
        self._parent_cancel_requested = False
        self._children: dict = {}   # _Child -> None, in creation order
        self._pending: dict = {}    # _Claim of each spawn() still waiting
        self._errors: list | None = []
        self._base_error = None
        self._on_completed_fut = None
        self._spawned = 0
        self._running = 0
        self._done = 0
        self._failed = 0

    def __repr__(self) -> str:
        info = [""]
        if self._limit is not None:
            info.append(f"limit={self._limit}")
        if self._children:
            info.append(f"tasks={len(self._children)}")
        if self._errors:
            info.append(f"errors={len(self._errors)}")
        if self._aborting:
            info.append("cancelling")
        elif self._entered:
            info.append("entered")
        return f"<BoundedTaskGroup{' '.join(info)}>"

    @property
    def limit(self) -> int | None:
        return self._limit

    @property
    def limiters(self) -> tuple:
        return self._limiters

    def statistics(self) -> GroupStatistics:
        waiting = len(self._pending) + sum(
            1 for child in self._children if child._waiting)
        return GroupStatistics(self._spawned, self._running, waiting,
                               self._done, self._failed)

    async def __aenter__(self):
        if self._entered:
            raise RuntimeError(
                f"TaskGroup {self!r} has already been entered")
        if self._loop is None:
            self._loop = get_running_loop()
        self._parent_task = current_task(self._loop)
        if self._parent_task is None:
            raise RuntimeError(
                f"TaskGroup {self!r} cannot determine the parent task")
        self._entered = True
        if self._cancel_on_enter:
            self.cancel()
        return self

    async def __aexit__(self, et, exc, tb):
        try:
            return await self._exit(et, exc)
        finally:
            # The errors' tracebacks hold frames that hold this group: let
            # go of them and of the parent task, so that a raised group of
            # errors does not keep them alive until the cycle collector runs.
            self._parent_task = None
            self._errors = None
            self._base_error = None
            et = exc = tb = None

    async def _exit(self, et, exc):
        propagate_cancellation_error = pending_cancellation_error = None
        try:
            self._exiting = True
            if (exc is not None and is_base_error(exc)
                    and self._base_error is None):
                self._base_error = exc
            if UNCANCEL_AFTER_WAIT:
                if et is not None and issubclass(et, CancelledError):
                    propagate_cancellation_error = exc
            elif et is CancelledError:
                propagate_cancellation_error = exc
            uncancelled = False
            if not UNCANCEL_AFTER_WAIT and self._parent_cancel_requested:
                uncancelled = True
                if self._parent_task.uncancel() == 0:
                    propagate_cancellation_error = None
            if et is not None and not self._aborting:
                self._abort()

            if (not UNCANCEL_AFTER_WAIT and et is None
                    and self._cancel_called
                    and not self._children and not self._pending):
                # cancel() was called from the body, which then ended
                # without awaiting: its cancellation is still pending, and
                # uncancel() does not drop it before 3.13. Take it here.
                # (One the group made for a child's error stays pending,
                # as asyncio's does before 3.13.)
                try:
                    await sleep(0)
                except CancelledError:
                    pass

            # The parent may be cancelled again while it waits, so loop.
            while self._children or self._pending:
                if self._on_completed_fut is None:
                    self._on_completed_fut = self._loop.create_future()
                    _deadlock.on_exit_wait(self, self._on_completed_fut)
                try:
                    await self._on_completed_fut
                except CancelledError as ex:
                    pending_cancellation_error = ex
                    if not self._aborting:
                        propagate_cancellation_error = ex
                        self._abort()
                self._on_completed_fut = None

            if self._base_error is not None:
                raise self._base_error

            if self._parent_cancel_requested:
                if not uncancelled and (UNCANCEL_AFTER_WAIT
                                        or not self._errors):
                    # The group's own cancellation of its parent is undone
                    # here (3.13+); before 3.13 at the start, and here only
                    # for one made since, which without an error only
                    # cancel() makes.
                    remaining = self._parent_task.uncancel()
                    if remaining == 0:
                        propagate_cancellation_error = None
                else:
                    remaining = self._parent_task.cancelling()
                if remaining and propagate_cancellation_error is None:
                    # gh-155433: a cancellation that is not the group's own
                    # arrived while the exit waited: it is not dropped.
                    propagate_cancellation_error = pending_cancellation_error

            if UNCANCEL_AFTER_WAIT:
                if (propagate_cancellation_error is not None
                        and not self._errors):
                    raise propagate_cancellation_error
            elif propagate_cancellation_error and not self._errors:
                raise propagate_cancellation_error

            if et is not None and (not issubclass(et, CancelledError)
                                   if UNCANCEL_AFTER_WAIT
                                   else et is not CancelledError):
                self._errors.append(exc)

            if not self._errors:
                # The body's CancelledError came from cancel(): swallow it.
                return (et is not None and issubclass(et, CancelledError)
                        and propagate_cancellation_error is None)
            if UNCANCEL_AFTER_WAIT and self._parent_task.cancelling():
                self._parent_task.uncancel()
                self._parent_task.cancel()
            if (BARE_GENERATOR_EXIT and et is not None
                    and issubclass(et, GeneratorExit)
                    and len(self._errors) == 1):
                raise exc
            raise BaseExceptionGroup(
                "unhandled errors in a TaskGroup", self._errors) from None
        finally:
            # A raised error's traceback holds this frame: it must not
            # hold the errors in turn.
            exc = propagate_cancellation_error = None
            pending_cancellation_error = None

    def spawn(self, coro, /, **kwargs):
        """Wait for the tokens, then start ``coro`` in a task of the group.
        Keywords (``name``, ``context``, and from 3.14 any the loop's
        create_task takes) go to the loop's create_task."""
        _check_keywords("spawn", kwargs)
        return _Spawn(self._spawn(coro, kwargs), coro)

    async def _spawn(self, coro, kwargs):
        iterator = _iterator_of(coro)
        self._check_can_create(coro, close_refused=True)
        loop = self._loop
        if _get_running_loop() is not loop:
            _close(coro)
            raise RuntimeError(
                f"TaskGroup {self!r} is bound to a different event loop")
        claim = _Claim(self._limiters)
        try:
            if not claim.try_take(loop):
                self._pending[claim] = None
                try:
                    await _wait_for_claim(claim, loop)
                finally:
                    del self._pending[claim]
        except BaseException:
            _close(coro)
            self._wake_exit()
            raise
        return self._start(coro, iterator, claim, False, kwargs)

    def create_task(self, coro, /, **kwargs):
        """Return a task at once; its coroutine starts when it has the tokens.
        Keywords go to the loop's create_task, as for spawn()."""
        _check_keywords("create_task", kwargs)
        iterator = _iterator_of(coro)
        self._check_can_create(coro, close_refused=CLOSES_REFUSED_CORO)
        claim = _Claim(self._limiters)
        try:
            if _get_running_loop() is not self._loop:
                raise RuntimeError(
                    f"TaskGroup {self!r} is bound to a different event loop")
            held = claim.try_take(self._loop)
        except BaseException:
            _close(coro)
            raise
        return self._start(coro, iterator, claim, not held, kwargs)

    def cancel(self) -> None:
        """Cancel every task and the body; the group then exits without error."""
        if not self._entered:
            self._cancel_on_enter = True
            return
        if self._exiting and not self._children and not self._pending:
            return
        self._cancel_called = True
        if not self._aborting:
            self._abort()
            if (self._parent_task is not None
                    and not self._parent_cancel_requested):
                self._parent_cancel_requested = True
                self._parent_task.cancel()

    # -- internals --

    @property
    def _exit_waiter(self):
        """The future the exit waits on for the children, if it does."""
        return self._on_completed_fut if self._exiting else None

    def _child_tasks(self) -> list:
        return [child._task for child in self._children
                if not child._finished]

    def _check_can_create(self, coro, close_refused) -> None:
        """Raises what asyncio's create_task() raises for a group in this
        state. ``close_refused``: close the coroutine it refuses (spawn()
        always does; create_task() as the running interpreter's does)."""
        if not self._entered:
            problem = "has not been entered"
        elif self._exiting and not self._children and not self._pending:
            problem = "is finished"
        elif self._aborting:
            problem = "is shutting down"
        else:
            return
        if close_refused:
            _close(coro)
        raise RuntimeError(f"TaskGroup {self!r} {problem}")

    def _start(self, target, iterator, claim, waiting, kwargs):
        child = _Child(self, target, iterator, claim, waiting)
        self._children[child] = None
        if not waiting:
            self._running += 1
        try:
            task = self._loop.create_task(child, **kwargs)
        except BaseException:
            # Nothing started: give the tokens back, close the coroutine.
            child.close()
            self._children.pop(child, None)
            self._done -= 1
            raise
        self._spawned += 1
        try:
            if child._finished:
                # An eager task ran to its end inside create_task().
                if EAGER_DONE_SCHEDULED:
                    self._settle(child, task)
                else:
                    self._on_child_done(child, task)
                return task
            child._task = task
            if add_to_awaited_by is not None:
                add_to_awaited_by(task, self._parent_task)
            if self._aborting and (EAGER_DONE_SCHEDULED
                                   or self._cancel_called):
                # gh-155418: its eager first step called cancel() before
                # the task was known. (Where finished eager children are
                # handled at once, a grandchild failing in that step aborts
                # the group too, and asyncio leaves the task running.)
                task.cancel()
            return task
        finally:
            # A child that failed in its eager first step has a traceback
            # whose frames lead back here: this frame must not hold its task.
            del task

    def _child_finished(self, child, error) -> None:
        """Runs in the child's last step: the tokens go back at once, unless
        the child failed; then the group fails its own waiting spawns first,
        so that it does not hand its tokens to work it is about to cancel."""
        child._finished = True
        if child._waiting:
            child._waiting = False
            child._stand_in = None
        else:
            self._running -= 1
        self._done += 1
        failed = error is not None and not isinstance(error, CancelledError)
        child._failed = failed
        if failed:
            self._failed += 1
        # A failed child's tokens wait for _on_child_done, which fails the
        # group's waiting spawns first; a KeyboardInterrupt or SystemExit
        # may stop the loop before that callback runs, so theirs come back
        # now. The child's own outcome stands: a failure giving its tokens
        # back is reported as unraisable.
        if not failed or is_base_error(error):
            child._claim._release_unraisable()
        task = child._task
        if task is None:
            return  # still inside create_task(): _start() settles it
        child._task = None
        if (discard_from_awaited_by is not None
                and self._parent_task is not None):
            discard_from_awaited_by(task, self._parent_task)
        self._settle(child, task)

    def _settle(self, child, task) -> None:
        """A finished child leaves the group at once, unless it failed or is
        the last one the exit waits for: then, like asyncio's done callback,
        after the task has its outcome, behind its own done callbacks."""
        last = (len(self._children) == 1 and not self._pending
                and self._on_completed_fut is not None)
        if not child._failed and not last:
            del self._children[child]
            return
        try:
            self._loop.call_soon(self._on_child_done, child, task)
        except RuntimeError:
            # The loop is closed (the task is being destroyed with it):
            # nobody will await the group any more.
            self._children.pop(child, None)
            child._claim.release()

    def _on_child_done(self, child, task) -> None:
        try:
            self._after_child(child, task)
        finally:
            child._claim.release()

    def _after_child(self, child, task) -> None:
        self._children.pop(child, None)
        self._wake_exit()
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        parent = self._parent_task
        if parent is None or parent.done():
            # (None: the exit ended without waiting for this child, its
            # wait interrupted by an error other than a cancellation.)
            self._loop.call_exception_handler({
                "message": f"Task {task!r} has errored out but its parent "
                           f"task {parent} is already completed",
                "exception": exc,
                "task": task,
            })
            return
        self._errors.append(exc)
        if is_base_error(exc) and self._base_error is None:
            self._base_error = exc
        if not self._aborting and not self._parent_cancel_requested:
            self._abort()
            self._parent_cancel_requested = True
            parent.cancel()

    def _wake_exit(self) -> None:
        future = self._on_completed_fut
        if (future is not None and not future.done()
                and not self._children and not self._pending):
            future.set_result(True)

    def _abort(self) -> None:
        self._aborting = True
        for child in list(self._children):
            task = child._task
            if task is not None and not task.done():
                task.cancel()
        if self._pending:
            error = f"TaskGroup {self!r} is shutting down"
            for claim in list(self._pending):
                claim.abort(RuntimeError(error))
