"""Deadlock detection on one Limiter, shared by both implementations.

A limiter is deadlocked when every one of its tokens is held by a task that
is stuck on it: waiting in its line (in spawn(), create_task()'s first
step, acquire() or ``async with``), or waiting in a BoundedTaskGroup's exit
for children that are all stuck on it. Nothing can then ever give a token
back. The waiters of those stuck tasks fail with DeadlockError; other
waiters (a task that holds none of the tokens) keep their place.

Both implementations call in here only on slow paths: when a task is about
to wait for a token of a full, finite Limiter, and when a group's exit is
about to wait for its children. They expose the same private views:

- ``limiter._deadlock_state()``: None unless the limiter is finite, full,
  has live waiters and knows who holds every token it has not handed to a
  child (``acquire_nowait()`` outside a task, or a ``release()`` by a task
  that never acquired, make it lose track until all tokens are back); else
  ``(loop, borrowed, holders, waiters)``, holders counting the tokens each
  task took with acquire()/acquire_nowait(), waiters the live futures in
  line;
- ``limiter._fail_waiters(futures, message)``;
- a group child's coroutine: ``_group`` and ``_holds(limiter)`` (how many
  tokens of it the child holds);
- a group: ``_exit_waiter`` (the future its exit waits on, or None),
  ``_parent_task``, ``_child_tasks()`` (None for a child without a task),
  ``_task_limiters()`` (those its tasks take beyond ``limiters``, given to
  spawn() or create_task()).

Detection is conservative: a token it cannot attribute (one held by a
stream's worker, or handed to a waiter that has not run yet) means no
deadlock is reported. Only deadlocks on a single limiter are found.
"""

from __future__ import annotations

from asyncio import all_tasks, current_task
from asyncio.events import _get_running_loop

from ._common import DeadlockError


def _child_holds(task, limiter) -> int:
    coro = task.get_coro()
    holds = getattr(coro, "_holds", None)
    return holds(limiter) if holds is not None else 0


def _group_of(task):
    coro = task.get_coro()
    return getattr(coro, "_group", None) if hasattr(coro, "_holds") else None


def on_block(limiter, future) -> None:
    """The current task is about to wait on ``future``, queued at
    ``limiter``."""
    state = limiter._deadlock_state()
    if state is None or _get_running_loop() is None:
        return
    task = current_task()
    if task is None:
        return
    holders = state[2]
    if holders.get(task, 0) or _child_holds(task, limiter):
        _check(limiter, state, task, future)
        return
    # A child waiting while its group's exit waits for it completes a
    # deadlock only if the group's parent holds a token (checking every
    # such child would cost a walk over all tasks per task created).
    group = _group_of(task)
    parent = group._parent_task if group is not None else None
    if (group is not None and group._exit_waiter is not None
            and parent is not None
            and (holders.get(parent, 0) or _child_holds(parent, limiter))):
        _check(limiter, state, task, future)


def on_exit_wait(group, future) -> None:
    """The current task is about to wait on ``future`` in ``group``'s exit,
    for its children."""
    if _get_running_loop() is None:
        return
    task = current_task()
    if task is None:
        return
    limiters = [*group.limiters, *group._task_limiters()]
    parent = _group_of(task)
    if parent is not None:
        limiters += [lim for lim in (*parent.limiters,
                                     *parent._task_limiters())
                     if lim not in limiters and _child_holds(task, lim)]
    for limiter in limiters:
        state = getattr(limiter, "_deadlock_state", None)
        state = state() if state is not None else None
        if state is not None:
            _check(limiter, state, task, future)


def _check(limiter, state, hint_task, hint_future) -> None:
    loop, borrowed, holders, waiters = state
    in_line = {id(f): f for f in waiters}

    def waiting_on(task):
        if task is hint_task:
            return hint_future
        return getattr(task, "_fut_waiter", None)

    stuck: dict = {}
    tasks = all_tasks(loop)
    tasks.add(hint_task)
    for task in tasks:
        future = waiting_on(task)
        if future is not None and in_line.get(id(future)) is future:
            stuck[task] = future
    exits: dict = {}          # a task stuck in a group's exit -> the group
    frontier = list(stuck)
    while frontier:
        group = _group_of(frontier.pop())
        if group is None:
            continue
        parent = group._parent_task
        exit_future = group._exit_waiter
        if (exit_future is None or parent is None or parent in stuck
                or waiting_on(parent) is not exit_future):
            continue
        children = group._child_tasks()
        if children and all(child in stuck for child in children):
            stuck[parent] = None
            exits[parent] = group
            frontier.append(parent)
    tokens = {task: holders.get(task, 0) + _child_holds(task, limiter)
              for task in stuck}
    if sum(tokens.values()) != borrowed:
        return
    # The deadlock is the holders and, below a holder stuck in an exit,
    # the children it waits for; a waiter holding nothing is not part of
    # it and keeps its place.
    part = [task for task, count in tokens.items() if count]
    seen = set(part)
    while part:
        group = exits.get(part.pop())
        for child in group._child_tasks() if group is not None else ():
            if child not in seen:
                seen.add(child)
                part.append(child)
    failing = {id(stuck[task]) for task in seen if stuck[task] is not None}
    limiter._fail_waiters(
        [future for future in waiters if id(future) in failing],  # in line
        f"deadlock: every token of {limiter!r} is held by a task that "
        "waits for a token of it (itself, or in a group's exit for "
        "children that do)")


__all__ = ["DeadlockError", "on_block", "on_exit_wait"]
