"""The reference's core layer (the twin of src/core/): token sources, the
claim of one token of each of several, and the wait for a claim.

Limiter, RateLimiter and ExternalSource share _TokenSource (TokenSource in
C): a FIFO line of waiter futures, the event loop they are bound to, a rank
in the global order, and acquire()/release()/async with. A _Claim takes one
token of each of several sources in rank order; _wait_for_claim is how an
awaitable waits for one (ClaimWait and claim_wait_for_next in C).
"""

from __future__ import annotations

import collections
import collections.abc
import inspect
import itertools
import math
import time
import types
from asyncio import CancelledError, current_task, get_running_loop

from .. import _deadlock
from .._common import (
    LimiterStatistics,
    RateLimiterStatistics,
    TIMER_LATENESS,
    RateParameters,
    WouldBlock,
    check_pause,
    check_positive,
    check_tokens,
    check_total_tokens,
    check_weight,
    check_within_total,
    write_unraisable,
)

__all__ = ["ExternalSource", "Limiter", "RateLimiter"]

# Every limiter gets a rank when it is created; a task takes its tokens in
# rank order, so two groups naming the same limiters in any order cannot each
# hold one token while waiting for the other's.
_ranks = itertools.count()

# What a plain release() knows of how its hold ended: nothing, so the
# releasing task's state decides.
_UNKNOWN = object()


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
        # Until when (the loop's time) pause() holds every token back.
        self._paused_until = -math.inf
        # The hold times of its tokens, for an AdaptiveLimiter; None: not
        # sampled.
        self._sampler = None
        return self

    def __init__(self) -> None:
        # Futures of the tasks waiting, in arrival order. A waiter is woken
        # with the result True when it is handed its tokens (which count as
        # taken from that moment, so nobody can barge in between), or False
        # when a group aborts its claim. A waiter for more than one token
        # has its count in _wants.
        self._waiters: collections.deque = collections.deque()
        self._wants: dict = {}
        self._initialized = True

    async def acquire(self, n: int = 1) -> None:
        n = check_weight(self, n)
        claim = _Claim((self,), None if n == 1 else (n,))
        loop = get_running_loop()
        if not claim.try_take(loop):
            await _wait_for_claim(claim, loop)
        self._note_holder(n)

    def acquire_nowait(self, n: int = 1) -> None:
        n = check_weight(self, n)
        if not self._try_take(get_running_loop(), n):
            raise WouldBlock(f"{n} token(s) of {self!r} are not free")
        self._note_holder(n)

    def pause(self, seconds: float) -> None:
        """Grant no token for ``seconds`` from now (a server's push-back:
        a 429's Retry-After). Holders keep theirs and waiters their places;
        a later pause extends it, an earlier one does not shorten it."""
        seconds = check_pause(seconds)
        loop = get_running_loop()
        self._bind(loop)
        until = loop.time() + seconds
        if until > self._paused_until:
            self._paused_until = until
            self._pause_changed()

    def hold(self, n: int = 1) -> "Holding":
        """``async with limiter.hold(n):`` takes n tokens and gives them
        back on the way out."""
        return Holding(self, check_weight(self, n))

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, typ, exc, tb) -> None:
        self._release_after(1, exc)

    def _release_after(self, n: int, error) -> None:
        """release(n) at the end of an ``async with`` that raised ``error``
        (None: it did not), which a sampled hold counts by."""
        self.release(n)

    def _check_weight(self, n: int) -> None:
        """Raises if this kind of source can never grant n at once."""

    # -- hold samples (an AdaptiveLimiter's feedback) --

    def _sample_holds(self, on_window, is_overload, size: int) -> None:
        """From now on every hold of its tokens that ends is a sample, and
        every ``size`` of them go to ``on_window`` (see _HoldSampler)."""
        if self._sampler is not None:
            raise RuntimeError(f"{self!r} cannot sample its holds twice")
        self._sampler = _HoldSampler(on_window, is_overload, size)

    def _window_so_far(self) -> tuple:
        """(samples, drops) of the window of hold samples under way."""
        sampler = self._sampler
        return (0, 0) if sampler is None else (sampler.samples,
                                               sampler.drops)

    def _mark_overload(self, task) -> None:
        """The next hold of ``task`` that ends counts as a drop."""
        if self._sampler is not None and task is not None:
            self._sampler.marked.add(task)

    def _pause_changed(self) -> None:
        """A pause began or was extended."""

    def _pause_holds(self) -> bool:
        """Whether a pause holds the tokens back now (forgotten once over)."""
        if self._paused_until == -math.inf:
            return False
        if self._loop.time() < self._paused_until:
            return True
        self._paused_until = -math.inf
        return False

    def _pause_end(self) -> float | None:
        """When the pause under way ends, for statistics(); None if none."""
        if self._loop is None or not self._pause_holds():
            return None
        return self._paused_until

    # -- the protocol a claim uses --

    def _bind(self, loop) -> None:
        if not self._initialized:
            raise RuntimeError(f"{type(self).__name__}.__init__() was not "
                               "called on this object")
        if self._loop is not loop:
            if self._loop is None:
                self._loop = loop
            else:
                self._move(loop)

    def _move(self, loop) -> None:
        """A source serves one loop at a time, and moves to another one only
        when nothing of it is in use where it is: no task waiting, no token
        held. So a module-level limiter serves one asyncio.run() after
        another, and a test suite's loop per test, while two loops never
        share its tokens. A closed loop's waiters can never run again; they
        are dropped, and tokens its tasks still hold stay counted until
        given back but no longer keep the source there."""
        closed = self._loop.is_closed()
        waiting = held = 0
        if not closed:
            waiting, held = self._waiting(), self._tokens_held()
        if waiting or held:
            raise RuntimeError(
                f"{self!r} is in use on a different event loop (tokens held "
                f"there: {held}, tasks waiting there: {waiting}): it moves "
                "to another loop only when idle, so give its tokens back on "
                "that loop first, or make one limiter per event loop")
        # The next start of a schedule and the end of a pause stay as far
        # ahead on the new loop's clock as on the old one's. A closed
        # loop's clock stands still, and asyncio's and uvloop's both count
        # on the monotonic clock.
        then = time.monotonic() if closed else self._loop.time()
        shift = loop.time() - then
        self._paused_until += shift     # (-inf, no pause, stays)
        self._move_schedule(shift)
        self._waiters.clear()           # none of them can be served
        self._wants.clear()
        self._loop = loop

    def _tokens_held(self) -> int:
        """Tokens held by tasks (of the loop it is bound to)."""
        raise NotImplementedError

    def _move_schedule(self, shift: float) -> None:
        """What a kind of source carries over to the loop it moves to,
        whose clock is ``shift`` ahead of the old one's; its waiters are
        dropped."""

    def _enqueue(self, loop, n: int = 1):
        future = loop.create_future()
        self._waiters.append(future)
        if n != 1:
            self._wants[future] = n
        return future

    def _dequeue(self, future) -> None:
        try:
            self._waiters.remove(future)
        except ValueError:
            pass
        self._wants.pop(future, None)

    def _popleft(self):
        """The first waiter and the tokens it wants, out of the line."""
        future = self._waiters.popleft()
        return future, self._wants.pop(future, 1)

    def _first_wants(self) -> int:
        return self._wants.get(self._waiters[0], 1)

    def _leave_line(self, future) -> None:
        """Takes ``future`` out of the line. That cannot fail for its claim:
        a failure of a subclass's _dequeue is reported as unraisable."""
        try:
            self._dequeue(future)
        except BaseException as error:
            write_unraisable(error)

    def _withdraw(self, future, n: int = 1) -> None:
        """The owner of ``future`` gives up: pass its tokens on if it has
        them."""
        if future.done() and not future.cancelled():
            if future.exception() is not None:
                # Failed by deadlock detection: handed nothing.
                self._leave_line(future)
            elif future.result() and n == 1:
                self._pass_on()
            elif future.result():
                self._pass_on(n)
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
            self._popleft()

    def _waiting(self) -> int:
        return sum(1 for future in self._waiters if not future.done())

    # -- who holds what, for deadlock detection (see _deadlock) --

    def _note_holder(self, n: int) -> None:
        pass

    def _deadlock_state(self):
        return None


class _HoldSampler:
    """The hold times of a source's tokens, a window at a time: the
    feedback of an AdaptiveLimiter (HoldSampler in C).

    A hold ends when its tokens come back: a group's child's or a stream's
    item's when it ends, an acquire()'s at release() or at the end of an
    ``async with``. Its time from grant to give-back is a sample of latency;
    it is a drop when its holder failed with an error ``is_overload`` says
    is one, or marked it (_mark_overload); it is no sample at all when it
    was cancelled. Every ``size`` samples, ``on_window(samples, drops,
    mean, least, in_flight)`` gets the window: the mean and the least time
    of the holds that were not drops (0.0 when all were), and the most
    tokens held at once while it lasted; it returns the next window's size.
    """

    __slots__ = ("on_window", "is_overload", "size", "samples", "drops",
                 "total_time", "least_time", "in_flight", "marked", "grants")

    def __init__(self, on_window, is_overload, size: int) -> None:
        self.on_window = on_window
        self.is_overload = is_overload
        self.size = size
        self.marked: set = set()    # tasks whose next sample is a drop
        # When each task's acquire()s were granted, for its release()s.
        self.grants: dict = {}
        self._new_window()

    def _new_window(self) -> None:
        self.samples = self.drops = self.in_flight = 0
        self.total_time = 0.0
        self.least_time = math.inf

    def note_grant(self, task, now: float) -> None:
        self.grants.setdefault(task, []).append(now)

    def grant_of(self, task) -> float | None:
        """When the latest acquire() of ``task`` not yet released was
        granted (forgotten now), or None."""
        times = self.grants.get(task)
        if not times:
            return None
        granted = times.pop()
        if not times:
            del self.grants[task]
        return granted

    def forget(self) -> None:
        """Nothing is held: no hold is under way to sample."""
        self.grants.clear()
        self.marked.clear()

    def record(self, task, held_for: float, error, in_flight: int) -> None:
        if task in self.marked:
            self.marked.discard(task)
            drop = True
        elif error is None:
            drop = False
        elif isinstance(error, CancelledError):
            return
        else:
            try:
                drop = bool(self.is_overload(error))
            except Exception as exc:
                write_unraisable(exc)
                drop = False
        self.samples += 1
        if drop:
            self.drops += 1
        else:
            self.total_time += held_for
            self.least_time = min(self.least_time, held_for)
        self.in_flight = max(self.in_flight, in_flight)
        if self.samples >= self.size:
            self._end_window()

    def _end_window(self) -> None:
        kept = self.samples - self.drops
        mean = self.total_time / kept if kept else 0.0
        least = self.least_time if kept else 0.0
        window = (self.samples, self.drops, mean, least, self.in_flight)
        self._new_window()
        try:
            size = self.on_window(*window)
        except Exception as exc:
            write_unraisable(exc)
            return
        if type(size) is int and size >= 1:
            self.size = size


class Holding:
    """What ``limiter.hold(n)`` returns: n tokens for an ``async with``."""

    __slots__ = ("_source", "_n")

    def __init__(self, source, n: int) -> None:
        self._source = source
        self._n = n

    def __repr__(self) -> str:
        return f"<Holding {self._n} of {self._source!r}>"

    async def __aenter__(self) -> None:
        await self._source.acquire(self._n)

    async def __aexit__(self, typ, exc, tb) -> None:
        self._source._release_after(self._n, exc)


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
        self._resume_timer = None   # wakes the waiters when a pause ends
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
        return LimiterStatistics(self._total, self._borrowed, self._waiting(),
                                 self._pause_end())

    def locked(self) -> bool:
        """True when an acquire would have to wait."""
        self._prune()
        return self._borrowed >= self._total or bool(self._waiters)

    def release(self, n: int = 1) -> None:
        self._release_after(n, _UNKNOWN)

    def _release_after(self, n: int, error) -> None:
        # (n may be more than the total, lowered since they were taken)
        n = check_tokens(n)
        self._check_borrowed(n)
        # Its tokens are borrowed, so it is bound to a loop: the task giving
        # them back is that loop's (none when called from elsewhere). What
        # it did not take is counted off those taken outside any task, and
        # what is left of that is lost track of.
        task = current_task(self._loop)
        count = self._holders.get(task, 0)
        own = min(count, n)
        if own == count and count:
            del self._holders[task]
        elif own:
            self._holders[task] = count - own
        anyone = min(self._unattributed, n - own)
        self._unattributed -= anyone
        if own + anyone < n:
            self._lost_track = True
        if self._sampler is not None:
            self._sample_release(task, error)
        self._give_back(n)

    def _sample_release(self, task, error) -> None:
        granted = self._sampler.grant_of(task)
        if granted is None:
            return      # taken by another task, or before sampling began
        if error is _UNKNOWN:
            # A release() mid-cancellation ends a cancelled hold.
            cancelling = task is not None and task.cancelling()
            error = CancelledError() if cancelling else None
        self._sampler.record(task, self._loop.time() - granted, error,
                             self._borrowed)

    def _check_borrowed(self, n: int) -> None:
        if self._borrowed < n:
            raise RuntimeError(
                f"release() of {n} token(s) called on {self!r}, which has "
                f"{self._borrowed} borrowed")

    def _check_weight(self, n: int) -> None:
        check_within_total(self, n, self._total)

    def _give_back(self, n: int = 1) -> None:
        """Tokens come back (from a claim, or from release())."""
        self._check_borrowed(n)
        self._borrowed -= n
        if self._borrowed == 0:
            # Nothing is held: whoever was recorded is stale.
            self._holders.clear()
            self._unattributed = 0
            self._lost_track = False
            if self._sampler is not None:
                self._sampler.forget()
        self._wake()

    def _tokens_held(self) -> int:
        return self._borrowed

    def _note_holder(self, n: int) -> None:
        task = current_task()
        if task is None:
            self._unattributed += n
        else:
            self._holders[task] = self._holders.get(task, 0) + n
        if self._sampler is not None:
            self._sampler.note_grant(task, self._loop.time())

    def _deadlock_state(self):
        if self._total == math.inf or self._lost_track or self._unattributed:
            return None
        self._prune()
        if not self._waiters or self._fits(self._first_wants()):
            return None
        waiters = [future for future in self._waiters if not future.done()]
        return self._loop, self._borrowed, self._holders, waiters

    def _fits(self, n: int) -> bool:
        return self._borrowed + n <= self._total

    def _fail_waiters(self, futures, message: str) -> None:
        for future in futures:
            self._dequeue(future)
            if not future.done():
                future.set_exception(_deadlock.DeadlockError(message))

    def _try_take(self, loop, n: int = 1) -> bool:
        """Take n tokens if they are free, nobody is queued ahead and no
        pause holds them back."""
        self._bind(loop)
        self._prune()
        if self._waiters or not self._fits(n) or self._pause_holds():
            return False
        self._borrowed += n
        return True

    def _enqueue(self, loop, n: int = 1):
        future = super()._enqueue(loop, n)
        if self._paused_until != -math.inf and self._resume_timer is None:
            self._arm_resume()
        return future

    def _pause_changed(self) -> None:
        if self._waiters:
            self._arm_resume()

    def _arm_resume(self) -> None:
        """Wake the waiters when the pause ends (at its latest end)."""
        if self._resume_timer is not None:
            self._resume_timer.cancel()
        self._resume_timer = self._loop.call_at(self._paused_until,
                                                self._resume)

    def _resume(self) -> None:
        # Armed for the pause's end as it stands: the pause is over, even
        # if the loop's clock reads a tick short of it.
        self._resume_timer = None
        self._paused_until = -math.inf
        self._wake()

    def _move_schedule(self, shift: float) -> None:
        if self._resume_timer is not None:  # for waiters that are gone
            self._resume_timer.cancel()
            self._resume_timer = None

    _pass_on = _give_back

    def _dequeue(self, future) -> None:
        # A waiter for more than is free holds back those behind it (so a
        # big request is never starved); once it leaves, they may fit.
        head = bool(self._waiters) and self._waiters[0] is future
        super()._dequeue(future)
        if head:
            self._wake()

    def _wake(self) -> None:
        """Hands free tokens to waiters in arrival order; the first that
        wants more than is free stops the others behind it."""
        waiters = self._waiters
        if waiters and self._pause_holds():
            return          # the pause's end wakes them
        while waiters and self._fits(self._first_wants()):
            future, n = self._popleft()
            if not future.done():
                try:
                    future.set_result(True)
                except RuntimeError:
                    continue    # its loop is closed: it can never run
                self._borrowed += n


class RateLimiter(RateParameters, _TokenSource):
    """Starts at most ``rate`` acquisitions per ``per`` seconds, with bursts
    of up to ``burst`` (GCRA: a token bucket kept as one timestamp).
    ``release()`` is a no-op: a start, once made, is spent."""

    def __init__(self, rate: float, per: float = 1.0, burst: int = 1) -> None:
        self._set_rate_parameters(rate, per, burst)
        # The theoretical arrival time of the next start: a start at `now`
        # is allowed when now >= tat - tolerance.
        self._tat = -math.inf
        self._timer = None
        self._timer_when = -math.inf
        super().__init__()

    def __repr__(self) -> str:
        return (f"<RateLimiter rate={self._rate!r} per={self._per!r} "
                f"burst={self._burst} waiting={self._waiting()}>")

    @RateParameters.rate.setter
    def rate(self, value: float) -> None:
        rate = check_positive("rate", value)
        # The last start stays where it was; the next one follows it at
        # the new interval.
        old_interval = self._interval()
        self._rate = rate
        self._tat += self._interval() - old_interval
        if self._loop is not None:
            self._schedule()

    def statistics(self) -> RateLimiterStatistics:
        return self._statistics_with(self._waiting(), self._pause_end())

    def locked(self) -> bool:
        self._prune()
        if self._waiters:
            return True
        return self._loop is not None and not self._due(self._loop.time())

    def release(self, n: int = 1) -> None:
        """A rate limiter has nothing to give back."""
        check_tokens(n)

    def _give_back(self, n: int = 1) -> None:
        pass

    def _tokens_held(self) -> int:
        return 0        # a start, once made, is spent: nothing is held

    def _move_schedule(self, shift: float) -> None:
        # The schedule goes with it, so that the rate holds across the move.
        if self._timer is not None:     # armed for waiters that are gone
            self._timer.cancel()
            self._timer = None
        self._tat += shift      # (-inf, never started, stays)

    def _pause_changed(self) -> None:
        self._schedule()        # the first waiter's start moved

    def _interval(self) -> float:
        return self._per / self._rate

    def _next_start(self, n: int = 1) -> float:
        """When a start of n units may be made: GCRA allows it while the
        schedule, n intervals further on, stays within the burst; and not
        before a pause ends (the spacing then goes on from there)."""
        return max(self._tat - self._interval() * (self._burst - n),
                   self._paused_until)

    def _due(self, now: float, n: int = 1) -> bool:
        # A microsecond early counts: loop clocks are floats (uvloop's counts
        # milliseconds), so a timer set for a start can wake to a time that
        # rounds a hair below it.
        return now + 1e-6 >= self._next_start(n)

    def _start(self, now: float, n: int = 1) -> None:
        self._tat = max(self._tat, now) + self._interval() * n

    def _try_take(self, loop, n: int = 1) -> bool:
        self._bind(loop)
        self._prune()
        now = loop.time()
        if self._waiters or not self._due(now, n):
            return False
        self._start(now, n)
        return True

    def _enqueue(self, loop, n: int = 1):
        future = super()._enqueue(loop, n)
        if len(self._waiters) == 1:
            self._schedule()
        return future

    def _dequeue(self, future) -> None:
        head = bool(self._waiters) and self._waiters[0] is future
        super()._dequeue(future)
        if head:
            self._schedule()

    def _pass_on(self, n: int = 1) -> None:
        # A waiter was handed a start of n units but gave up: the next one
        # gets it if it wants as many; else the n intervals go back to the
        # schedule, and the next one starts when that allows.
        self._prune()
        if self._waiters and self._first_wants() == n:
            self._popleft()[0].set_result(True)
        else:
            self._tat -= self._interval() * n
        self._schedule()

    def _schedule(self) -> None:
        """Arm the timer for the first waiter's start."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._prune()
        if self._waiters:
            self._timer_when = self._next_start(self._first_wants())
            self._timer = self._loop.call_at(self._timer_when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = self._loop.time()
        first = True
        self._prune()
        # The timer may fire a clock tick early: the first waiter goes
        # anyway, and _start() keeps the schedule from there. Late by up to
        # TIMER_LATENESS (a loop rounds its waits to the millisecond), the
        # waiters start on the schedule, as if it had fired in time, and
        # those that came due meanwhile go at once; a longer stall restarts
        # the schedule from now instead of letting missed starts flood in.
        late = now - self._timer_when
        scheduled = self._timer_when if 0 < late <= TIMER_LATENESS else now
        while self._waiters and (first or self._due(now, self._first_wants())):
            future, n = self._popleft()
            self._start(scheduled, n)
            future.set_result(True)
            first = False
            self._prune()
        self._schedule()


class ExternalSource(_TokenSource):
    """The base of limiters whose tokens live outside this process
    (taskbound.redis). A claim drives it through the same methods as any
    token source; the subclass implements them and keeps its own line:

    - ``_try_take(loop[, n]) -> bool``: take n tokens now, without waiting;
    - ``_enqueue(loop[, n]) -> future``: queue a waiter for n, whose result
      is True once it holds them (False: the claim aborted);
    - ``_dequeue(future)``: the waiter leaves the line, unserved;
    - ``_pass_on([n])``: a waiter handed n tokens gave up: pass them on;
    - ``_give_back([n])``: n tokens come back;
    - ``_check_weight(n)``: raise if n at once can never be granted.

    ``_bind(loop)`` and ``_loop`` come from the base, as for every source.
    ``n`` is passed only when it is not 1, so a subclass that takes one
    token at a time needs no ``n`` at all: the base's ``_check_weight``
    refuses any other ``n`` at the call.
    """

    def __new__(cls, *args, **kwargs):
        self = super().__new__(cls)
        self._initialized = True   # nothing of the base's to set up
        return self

    def release(self, n: int = 1) -> None:
        if check_weight(self, n) == 1:
            self._give_back()
        else:
            self._give_back(n)

    def pause(self, seconds: float) -> None:
        check_pause(seconds)
        raise NotImplementedError(
            f"{self!r} cannot pause: its tokens live elsewhere, and its "
            "class does not implement pause() there")

    def _check_weight(self, n: int) -> None:
        # The default: one token at a time. A subclass that takes more
        # overrides it with its own rule (n above its total, say).
        raise ValueError(f"{self!r} takes one token at a time: n must be 1, "
                         f"not {n}")

    def _move(self, loop) -> None:
        raise RuntimeError(
            f"{self!r} is bound to a different event loop: it stays with the "
            "loop it first served, as its connections do; make one per event "
            "loop")

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
    """Tokens of each of several limiters (``costs[i]`` of the i-th, one of
    each when ``costs`` is None), taken in rank order.

    ``try_take`` takes what is free and, at the first limiter that is busy,
    queues a waiter future at once (so the claim keeps its place in line
    from the moment it is made). ``resume`` continues after that future is
    done; ``abandon`` gives everything back.

    A source is asked for n only when n is not 1: the protocol of external
    sources has no n (they take one token at a time).
    """

    __slots__ = ("limiters", "costs", "held", "waiter", "abort_error",
                 "granted_at")

    def __init__(self, limiters, costs=None) -> None:
        self.limiters = limiters
        self.costs = costs
        self.held = 0
        self.waiter = None
        self.abort_error = None
        # When its holder began to use the tokens, if a source samples
        # hold times (see _HoldSampler); else None.
        self.granted_at = None

    def cost(self, i: int) -> int:
        return 1 if self.costs is None else self.costs[i]

    def try_take(self, loop) -> bool:
        """Takes what it can; True when every token is held, and the
        hold's sample starts now."""
        if not self.take_tokens(loop):
            return False
        self.note_start(loop)
        return True

    def take_tokens(self, loop) -> bool:
        """try_take for a holder that notes its start itself, later (a
        stream's worker, when its item starts)."""
        limiters = self.limiters
        try:
            while self.held < len(limiters):
                limiter = limiters[self.held]
                n = self.cost(self.held)
                if n == 1:
                    taken = limiter._try_take(loop)
                else:
                    taken = limiter._try_take(loop, n)
                if not taken:
                    self.waiter = (limiter._enqueue(loop) if n == 1
                                   else limiter._enqueue(loop, n))
                    return False
                self.held += 1
        except BaseException:
            self._release_unraisable()
            raise
        return True

    def note_start(self, loop) -> None:
        """Its holder begins to use its tokens now (a stream's worker may
        hold them while it pulls the item)."""
        for limiter in self.limiters:
            if limiter._sampler is not None:
                self.granted_at = loop.time()
                return

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
                self.limiters[self.held]._withdraw(future,
                                                   self.cost(self.held))
        self.abort_error = None
        with errors:
            self.release()
        errors.raise_it()

    def release(self) -> None:
        """Gives back every token held, last taken first. Keeps going after
        an error, and raises the first one (the others are unraisable).
        No hold time is sampled: the tokens were not used to the end."""
        self.granted_at = None
        self.release_after(None, None)

    def release_after(self, task, error) -> None:
        """release(), once the holder's work ended (``error``: how it
        failed, or None), for ``task``: a source that samples hold times
        counts this one (see _HoldSampler)."""
        held, self.held = self.held, 0
        granted, self.granted_at = self.granted_at, None
        errors = _FirstError()
        for i in reversed(range(held)):
            n = self.cost(i)
            with errors:
                sampler = self.limiters[i]._sampler
                if sampler is not None and granted is not None:
                    limiter = self.limiters[i]
                    sampler.record(task, limiter._loop.time() - granted,
                                   error, limiter._tokens_held())
                if n == 1:
                    self.limiters[i]._give_back()
                else:
                    self.limiters[i]._give_back(n)
        errors.raise_it()

    def release_after_unraisable(self, task, error) -> None:
        """release_after(), where the holder's own outcome stands: a
        failure giving the tokens back is reported as unraisable."""
        try:
            self.release_after(task, error)
        except BaseException as exc:
            write_unraisable(exc)

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


