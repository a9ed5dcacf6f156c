"""The package picks the C core unless TASKBOUND_PURE_PYTHON=1 asks for the
reference, and says which one it picked."""

from __future__ import annotations

import os
import subprocess
import sys

import taskbound
from conftest import MODULES, PURE


def test_active_implementation_matches_the_environment():
    expected = "python" if PURE else "c"
    assert taskbound.implementation == expected
    module = sys.modules[MODULES[expected]]
    assert taskbound.Limiter is module.Limiter
    assert taskbound.BoundedTaskGroup is module.BoundedTaskGroup


def test_environment_variable_selects_the_reference():
    code = "import taskbound; print(taskbound.implementation)"
    env = dict(os.environ, TASKBOUND_PURE_PYTHON="1")
    out = subprocess.run([sys.executable, "-c", code], env=env,
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "python"
    env["TASKBOUND_PURE_PYTHON"] = "0"
    out = subprocess.run([sys.executable, "-c", code], env=env,
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "c"


def test_deadlock_error_is_a_runtime_error():
    assert issubclass(taskbound.DeadlockError, RuntimeError)
