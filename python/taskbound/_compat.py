"""Where CPython releases differ in what asyncio.TaskGroup does.

BoundedTaskGroup follows the running interpreter's own TaskGroup, patch
releases included (3.13.0 and 3.13.2 differ), so each difference is decided
here once, from the running interpreter, and both implementations read it:
the reference imports these names, the C core copies them into its module
state when it is imported. Where a difference can be seen on asyncio's
objects it is detected; where it cannot (it is inside a method's body), the
full version is compared.
"""

from __future__ import annotations

import asyncio
import asyncio.futures
import inspect
import sys

_version = sys.version_info[:3]

# 3.13: the parent's uncancel() happens after the wait for the children, a
# CancelledError subclass from the body counts as a cancellation, a parent
# cancelled from outside while errors are raised is cancelled again, and
# Task.uncancel() drops a cancellation still pending once the count is 0.
UNCANCEL_AFTER_WAIT = _version >= (3, 13)

# 3.13: create_task() closes the coroutine it refuses (not entered,
# finished, shutting down). Before, the caller had to close or await it.
CLOSES_REFUSED_CORO = _version >= (3, 13)

# gh-128550, gh-128588 (3.12.9, 3.13.2): a child that finishes in its eager
# first step is handled by a scheduled done callback like any other child,
# not at once inside create_task().
EAGER_DONE_SCHEDULED = ((3, 12, 9) <= _version < (3, 13)
                        or _version >= (3, 13, 2))

# gh-128307 (3.14): create_task(coro, **kwargs) passes every keyword on to
# the loop's create_task (eager_start=, ...).
CREATE_TASK_KWARGS = any(
    parameter.kind is inspect.Parameter.VAR_KEYWORD
    for parameter in inspect.signature(
        asyncio.TaskGroup.create_task).parameters.values())

# gh-91048 (3.14): each child is linked to the parent task while it runs,
# for asyncio.capture_call_graph() and `python -m asyncio ps/pstree`.
add_to_awaited_by = getattr(asyncio.futures, "future_add_to_awaited_by",
                            None)
discard_from_awaited_by = getattr(asyncio.futures,
                                  "future_discard_from_awaited_by", None)

# On 3.12 and 3.13 the running task of each loop is kept in a dict, which
# asyncio's C current_task(loop) only looks up: the C core reads it
# directly (a call less per acquire and release). From 3.14 it lives in
# the thread state; 3.11's current_task is Python; this is None there, as
# it is where current_task has been replaced.
def _current_tasks():
    try:
        import _asyncio
    except ImportError:
        return None
    tasks = getattr(_asyncio, "_current_tasks", None)
    if (type(tasks) is dict
            and asyncio.current_task is getattr(_asyncio, "current_task", 0)
            and asyncio.tasks._current_tasks is tasks):
        return tasks
    return None


current_tasks = _current_tasks()

# 3.15: when the body's only error is a GeneratorExit, it is re-raised bare
# (an async generator holding a group then closes cleanly on aclose()).
BARE_GENERATOR_EXIT = _version >= (3, 15)
