"""The running interpreter's own TaskGroup tests, on BoundedTaskGroup.

CPython's ``test.test_asyncio.test_taskgroups`` (the copy that ships with
the interpreter under test) runs with every ``TaskGroup`` it names replaced
by ``BoundedTaskGroup()`` and by ``BoundedTaskGroup(limit=10**6)``, on both
implementations, both loops, lazy and eager tasks. The same tests run on
``asyncio.TaskGroup`` itself too, so that a test the loop cannot pass (not
the group) shows as that.

Tests that read asyncio.TaskGroup's private attributes cannot pass on
another class; they are listed in PRIVATE_READERS and must fail, each with
the AttributeError of the private it reads. A test that a loop cannot pass
even with asyncio.TaskGroup is in LOOP_FAILURES and must fail there, for
every group, as it does on asyncio's. Both lists are checked, so they stay
true.
"""

from __future__ import annotations

import asyncio
import importlib
import types
import unittest
import warnings

import pytest

from conftest import (HAS_EAGER, IMPLEMENTATIONS, LOOPS, Impl,
                      eager_task_factory, new_loop)
from helpers import collecting_what_it_leaves

stdlib_tests = importlib.import_module("test.test_asyncio.test_taskgroups")

# Test name -> the private attribute of asyncio.TaskGroup it reads.
PRIVATE_READERS = {
    "test_taskgroup_23": "_tasks",
}

# (test name, loop, eager) -> what its failure report says. uvloop names a
# task after the task factory returns it, so an eager first step still
# sees the default name.
LOOP_FAILURES = {
    ("test_name", "uvloop", True): "!= 'example name'",
}


def stdlib_test_names() -> list[str]:
    names = set()
    for value in vars(stdlib_tests).values():
        if isinstance(value, type) and issubclass(value, unittest.TestCase):
            names.update(unittest.TestLoader().getTestCaseNames(value))
    return sorted(names)


def stdlib_case_class() -> type:
    """The suite's lazy-task TestCase (TestTaskGroup in every version)."""
    return stdlib_tests.TestTaskGroup


class Redirect(types.ModuleType):
    """A module that is ``module`` except that its TaskGroup is ``group``."""

    def __init__(self, module: types.ModuleType, group) -> None:
        super().__init__(module.__name__)
        self._module = module
        self.TaskGroup = group

    def __getattr__(self, name: str):
        return getattr(self._module, name)


def make_case(loop_kind: str, eager: bool):
    """The stdlib TestCase, on `loop_kind`, with or without eager tasks."""

    def make_loop():
        loop = new_loop(loop_kind)
        if eager:
            loop.set_task_factory(eager_task_factory)
        return loop

    base = stdlib_case_class()
    assert hasattr(base, "_setupAsyncioRunner"), \
        "unittest's IsolatedAsyncioTestCase no longer has _setupAsyncioRunner"

    class Case(base):
        def _setupAsyncioRunner(self):
            self._asyncioRunner = asyncio.Runner(debug=True,
                                                 loop_factory=make_loop)

    return Case


GROUPS = ["asyncio"] + [f"{impl}-{bound}" for impl in IMPLEMENTATIONS
                        for bound in ("unbounded", "roomy")]


@pytest.fixture(params=GROUPS)
def group_class(request):
    """asyncio.TaskGroup (the oracle), or a BoundedTaskGroup class without a
    limit or with one no test reaches; no token may stay borrowed."""
    if request.param == "asyncio":
        yield asyncio.TaskGroup
        return
    name, bound = request.param.split("-")
    impl = Impl(name)
    yield (impl.BoundedTaskGroup if bound == "unbounded"
           else lambda: impl.BoundedTaskGroup(limit=10**6))
    leaked = [lim for lim in impl.limiters if lim.borrowed_tokens != 0]
    assert not leaked, f"tokens still borrowed at the end: {leaked}"


@pytest.mark.parametrize("eager", [False, True] if HAS_EAGER else [False],
                         ids=lambda e: "eager" if e else "lazy")
@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize("name", stdlib_test_names())
def test_stdlib_taskgroup_test(monkeypatch, group_class, loop_kind, eager,
                               name):
    monkeypatch.setattr(stdlib_tests, "asyncio",
                        Redirect(asyncio, group_class))
    monkeypatch.setattr(stdlib_tests, "taskgroups",
                        Redirect(asyncio.taskgroups, group_class))
    result = unittest.TestResult()
    with warnings.catch_warnings(record=True) as caught:
        # As CPython's own runner has them; only deprecations (the suite's
        # own use of deprecated calls) are let through below.
        warnings.simplefilter("always")
        with collecting_what_it_leaves():
            make_case(loop_kind, eager)(name).run(result)
    unexpected = [str(w.message) for w in caught
                  if not issubclass(w.category, DeprecationWarning)]
    assert not unexpected, unexpected
    problems = result.errors + result.failures
    assert not result.skipped, result.skipped
    if (name, loop_kind, eager) in LOOP_FAILURES:
        assert len(problems) == 1, problems
        assert LOOP_FAILURES[name, loop_kind, eager] in problems[0][1]
        return
    if name in PRIVATE_READERS and group_class is not asyncio.TaskGroup:
        private = PRIVATE_READERS[name]
        assert len(problems) == 1, problems
        report = problems[0][1]
        assert "AttributeError: " in report and f"'{private}'" in report, \
            report
        return
    assert not problems, "\n".join(text for _, text in problems)
    assert result.testsRun == 1
