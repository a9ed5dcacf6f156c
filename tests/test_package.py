"""The package picks the C core unless TASKBOUND_PURE_PYTHON=1 asks for the
reference, and says which one it picked."""

from __future__ import annotations

import os
import subprocess
import sys

import taskbound
from conftest import MODULES, PURE


def output_of(code: str, pure: str) -> str:
    """What ``python -c code`` prints with TASKBOUND_PURE_PYTHON=pure."""
    env = dict(os.environ, TASKBOUND_PURE_PYTHON=pure)
    return subprocess.run([sys.executable, "-c", code], env=env,
                          capture_output=True, text=True, check=True).stdout


def test_active_implementation_matches_the_environment():
    expected = "python" if PURE else "c"
    assert taskbound.implementation == expected
    module = sys.modules[MODULES[expected]]
    assert taskbound.Limiter is module.Limiter
    assert taskbound.BoundedTaskGroup is module.BoundedTaskGroup


def test_environment_variable_selects_the_reference():
    code = "import taskbound; print(taskbound.implementation)"
    assert output_of(code, "1").strip() == "python"
    assert output_of(code, "0").strip() == "c"


def test_deadlock_error_is_a_runtime_error():
    assert issubclass(taskbound.DeadlockError, RuntimeError)


PUBLIC_TYPES = ["BoundedTaskGroup", "DeadlockError", "GroupStatistics",
                "KeyedLimiter", "KeyedLimiterStatistics",
                "Limiter", "LimiterStatistics", "LimiterUnavailable",
                "RateLimiter", "RateLimiterStatistics", "WouldBlock"]


def test_public_types_are_named_where_users_import_them():
    """Reprs, error messages and tracebacks say taskbound.Limiter, not the
    module inside the package it is defined in, with either implementation
    active."""
    code = ("import traceback, taskbound\n"
            f"for name in {PUBLIC_TYPES!r}:\n"
            "    print(repr(getattr(taskbound, name)))\n"
            "try:\n"
            "    raise taskbound.DeadlockError('stuck')\n"
            "except Exception as error:\n"
            "    print(traceback.format_exception(error)[-1].strip())\n")
    for pure in ("0", "1"):
        expected = [f"<class 'taskbound.{name}'>" for name in PUBLIC_TYPES]
        assert output_of(code, pure).splitlines() == expected + [
            "taskbound.DeadlockError: stuck"], pure


def test_command_line_help():
    def taskbound_command(*args):
        return subprocess.run([sys.executable, "-m", "taskbound", *args],
                              capture_output=True, text=True)

    top = taskbound_command("--help")
    assert top.returncode == 0 and top.stderr == ""
    assert top.stdout.startswith("usage: python -m taskbound")
    assert "bench" in top.stdout and "--version" in top.stdout
    bench = taskbound_command("bench", "--help")
    assert bench.returncode == 0 and "--items" in bench.stdout
    version = taskbound_command("--version")
    assert version.stdout.strip() == f"taskbound {taskbound.__version__}"
    nothing = taskbound_command()
    assert nothing.returncode == 2 and "COMMAND" in nothing.stderr
    unknown = taskbound_command("benchh")
    assert unknown.returncode == 2 and "invalid choice" in unknown.stderr


def test_a_missing_extra_says_how_to_install_it_from_a_checkout_too():
    """Until there is a published release, 'pip install taskbound[redis]'
    alone would send users to a package index that lacks it."""
    code = ("import sys\n"
            "sys.modules['redis'] = None  # as if redis-py were not installed\n"
            "try:\n"
            "    import taskbound.redis\n"
            "except ImportError as error:\n"
            "    print(error)\n")
    for pure in ("0", "1"):
        assert output_of(code, pure).strip() == (
            "taskbound.redis needs redis-py: pip install 'taskbound[redis]', "
            "or from a checkout: pip install '.[redis]'"), pure
