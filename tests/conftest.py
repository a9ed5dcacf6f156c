"""Every test runs on both implementations (C, Python) and both loops
(asyncio, uvloop). A test fails if a loop's exception handler is called
unexpectedly, if a coroutine is left un-awaited, or if any limiter it made
still has borrowed tokens when it ends."""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
import warnings

import pytest

from helpers import MODULES, collecting_what_it_leaves
from taskbound._virtualclock import VirtualClockLoop

PURE = os.environ.get("TASKBOUND_PURE_PYTHON", "") not in ("", "0")
IMPLEMENTATIONS = ["python"] if PURE else ["c", "python"]
LOOPS = ["asyncio", "uvloop"]
HAS_EAGER = sys.version_info >= (3, 12)


REDIS_CLASSES: dict = {}
ADAPTIVE_CLASSES: dict = {}


class Impl:
    """One implementation, recording every limiter and group a test makes."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.module = importlib.import_module(MODULES[name])
        self.LimiterType = self.module.Limiter
        self.RateLimiterType = self.module.RateLimiter
        self.GroupType = self.module.BoundedTaskGroup
        self.limiters: list = []
        from taskbound._helpers import Helpers
        helpers = Helpers.of(self.module)
        self.gather = helpers.gather
        self.as_completed = helpers.as_completed
        self.amap = helpers.amap
        from taskbound._keyed import keyed_type
        self.KeyedLimiter = keyed_type(self.LimiterType)
        from taskbound._adaptive import adaptive_type
        if name not in ADAPTIVE_CLASSES:
            ADAPTIVE_CLASSES[name] = adaptive_type(self.LimiterType)
        self.AdaptiveLimiterType = ADAPTIVE_CLASSES[name]

    @property
    def redis(self):
        """RedisLimiter and RedisRateLimiter on this implementation."""
        from taskbound.redis import _classes
        if self.name not in REDIS_CLASSES:
            REDIS_CLASSES[self.name] = _classes(self.module.ExternalSource)
        return REDIS_CLASSES[self.name]

    def Limiter(self, total_tokens):
        limiter = self.LimiterType(total_tokens)
        self.limiters.append(limiter)
        return limiter

    def AdaptiveLimiter(self, initial, **options):
        limiter = self.AdaptiveLimiterType(initial, **options)
        self.limiters.append(limiter)
        return limiter

    def RateLimiter(self, rate, per=1.0, burst=1):
        return self.RateLimiterType(rate, per, burst)

    def BoundedTaskGroup(self, limit=None, *, limiter=None):
        group = self.GroupType(limit, limiter=limiter)
        self.limiters.extend(group.limiters)
        return group

    def __repr__(self) -> str:
        return f"Impl({self.name})"


@pytest.fixture(params=IMPLEMENTATIONS)
def impl(request):
    impl = Impl(request.param)
    yield impl
    leaked = [lim for lim in impl.limiters
              if getattr(lim, "borrowed_tokens", 0) != 0]
    assert not leaked, f"tokens still borrowed at the end: {leaked}"


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        import uvloop
        return uvloop.new_event_loop()
    if kind == "virtual":
        return VirtualClockLoop()
    if kind == "virtual-ms":
        return VirtualClockLoop(tick=1e-3)
    return asyncio.new_event_loop()


def eager_task_factory(loop, coro, *, eager_start=None, **kwargs):
    # uvloop on 3.13 passes eager_start=, which 3.13.0's factory rejects.
    return asyncio.eager_task_factory(loop, coro, **kwargs)


class Runner:
    """Runs a test's main coroutine on a fresh loop and checks what it left."""

    def __init__(self, loop_kind: str) -> None:
        self.loop_kind = loop_kind
        self.handler_calls: list = []
        self.expected_handler_calls = 0

    def __call__(self, main, *, eager: bool = False, handler_calls: int = 0):
        self.expected_handler_calls = handler_calls

        def factory():
            loop = new_loop(self.loop_kind)
            loop.set_exception_handler(
                lambda loop, context: self.handler_calls.append(context))
            if eager:
                loop.set_task_factory(eager_task_factory)
            return loop

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                with collecting_what_it_leaves(), \
                        asyncio.Runner(loop_factory=factory) as runner:
                    return runner.run(main)
            finally:
                problems = [w for w in caught
                            if "never awaited" in str(w.message)
                            or "destroyed" in str(w.message)]
                assert not problems, [str(w.message) for w in problems]
                assert len(self.handler_calls) == handler_calls, \
                    self.handler_calls


@pytest.fixture(params=LOOPS)
def run(request):
    return Runner(request.param)


EAGER_MODES = [False, True] if HAS_EAGER else [False]


@pytest.fixture(params=EAGER_MODES, ids=lambda e: "eager" if e else "lazy")
def eager(request):
    return request.param


@pytest.fixture(params=["asyncio", "uvloop"])
def timed_run(request):
    """A runner for tests of timing: on asyncio, with a virtual clock that
    makes every time exact; on uvloop, in real time, so a check there
    allows for the machine's lateness (never for earliness)."""
    kind = "virtual" if request.param == "asyncio" else "uvloop"
    return Runner(kind)


@pytest.fixture(params=["asyncio", "uvloop"])
def coarse_run(request):
    """Like timed_run, but the virtual clock wakes only on whole
    milliseconds, so every timer fires late by up to one, as epoll's do."""
    kind = "virtual-ms" if request.param == "asyncio" else "uvloop"
    return Runner(kind)


@pytest.fixture(scope="session")
def redis_server():
    """One redis-server for the whole run (tests use names of their own)."""
    from taskbound._benchredis import Server
    server = Server()
    server.start()
    yield server
    server.close()


@pytest.fixture
def own_redis_server():
    """A redis-server of the test's own, which it may stop and start again."""
    from taskbound._benchredis import Server
    server = Server()
    server.start()
    yield server
    server.close()
