"""The reference's group layer (the twin of src/group/): BoundedTaskGroup,
the _Child coroutine each child's Task runs, and _Spawn, the awaitable of
spawn(). It builds on the core layer only.
"""

from __future__ import annotations

import collections
import collections.abc
import inspect
from asyncio import CancelledError, current_task, get_running_loop, sleep
from asyncio.events import _get_running_loop

from .. import _deadlock
from .._common import (
    GroupStatistics,
    check_limit,
    costs_in_rank_order,
    is_base_error,
    limiters_in_rank_order,
    waiting_stand_in,
)
from .._compat import (
    BARE_GENERATOR_EXIT,
    CLOSES_REFUSED_CORO,
    CREATE_TASK_KWARGS,
    EAGER_DONE_SCHEDULED,
    UNCANCEL_AFTER_WAIT,
    add_to_awaited_by,
    discard_from_awaited_by,
)
from .core import (
    Limiter,
    _Claim,
    _close,
    _iterator_of,
    _TokenSource,
    _wait_for_claim,
)

__all__ = ["BoundedTaskGroup"]


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

    def _holds(self, limiter) -> int:
        """How many tokens of ``limiter`` this child holds."""
        claim = self._claim
        if self._finished:
            return 0
        for i, held in enumerate(claim.limiters[:claim.held]):
            if held is limiter:
                return claim.cost(i)
        return 0

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
        self._task_limiters_given = False
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
            raise self._error("has already been entered")
        if self._loop is None:
            self._loop = get_running_loop()
        self._parent_task = current_task(self._loop)
        if self._parent_task is None:
            raise self._error("cannot determine the parent task")
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

    def spawn(self, coro, /, *, limiter=None, cost=None, **kwargs):
        """Wait for the tokens, then start ``coro`` in a task of the group.
        ``limiter`` adds limiters for this task only, ``cost`` maps a
        limiter to the tokens this task takes of it (1 of each otherwise).
        Other keywords (``name``, ``context``, and from 3.14 any the loop's
        create_task takes) go to the loop's create_task."""
        _check_keywords("spawn", kwargs)
        claim = self._claim_for(coro, limiter, cost)
        return _Spawn(self._spawn(coro, claim, kwargs), coro)

    async def _spawn(self, coro, claim, kwargs):
        iterator = _iterator_of(coro)
        self._check_can_create(coro, close_refused=True)
        loop = self._loop
        if _get_running_loop() is not loop:
            _close(coro)
            raise self._error("is bound to a different event loop")
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

    def create_task(self, coro, /, *, limiter=None, cost=None, **kwargs):
        """Return a task at once; its coroutine starts when it has the tokens.
        Keywords as for spawn()."""
        _check_keywords("create_task", kwargs)
        iterator = _iterator_of(coro)
        claim = self._claim_for(coro, limiter, cost)
        self._check_can_create(coro, close_refused=CLOSES_REFUSED_CORO)
        try:
            if _get_running_loop() is not self._loop:
                raise self._error("is bound to a different event loop")
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

    def _claim_for(self, coro, limiter, cost) -> _Claim:
        """The claim of a task of this group with its own ``limiter`` and
        ``cost``; a bad one closes ``coro``, which will never run."""
        if limiter is None and cost is None:
            return _Claim(self._limiters)
        try:
            limiters = limiters_in_rank_order(self._limiters, limiter,
                                              _TokenSource)
            claim = _Claim(limiters, costs_in_rank_order(limiters, cost))
        except BaseException:
            _close(coro)
            raise
        self._task_limiters_given = True
        return claim

    def _task_limiters(self) -> tuple:
        """The limiters its children and waiting spawns take beyond the
        group's own (given to spawn() or create_task())."""
        if not self._task_limiters_given:
            return ()
        own = {id(limiter) for limiter in self._limiters}
        found = {}
        claims = [child._claim for child in self._children
                  if not child._finished]
        for claim in (*claims, *self._pending):
            for limiter in claim.limiters:
                if id(limiter) not in own:
                    found[id(limiter)] = limiter
        return tuple(found.values())

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
        raise self._error(problem)

    def _error(self, problem: str) -> RuntimeError:
        """The error of asyncio's form, "TaskGroup <group> <problem>"."""
        return RuntimeError(f"TaskGroup {self!r} {problem}")

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
            claim = child._claim
            claim.release_after_unraisable(
                None if claim.granted_at is None else current_task(), error)
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
            error = (None if task.cancelled() or not task.done()
                     else task.exception())
            child._claim.release_after(task, error)

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
            for claim in list(self._pending):
                claim.abort(self._error("is shutting down"))
