"""What both implementations share: exceptions, statistics records, checks."""

from __future__ import annotations

import collections.abc
import inspect
import math
import operator
from typing import NamedTuple


class DeadlockError(RuntimeError):
    """A wait on a limiter that can never end: every holder of its tokens waits too."""


class LimiterUnavailable(OSError):
    """A limiter whose tokens live elsewhere (a Redis server) could not be
    reached: the wait failed and nothing is held. An OSError, like the
    network errors it stands for; the client's own error is ``__cause__``."""


class WouldBlock(Exception):
    """``acquire_nowait()`` found no free token (or others queued ahead)."""


class LimiterStatistics(NamedTuple):
    total_tokens: int | float
    borrowed_tokens: int
    waiting: int
    # When a pause() ends, in the loop's time; None when not paused.
    paused_until: float | None = None


class AdaptiveLimiterStatistics(NamedTuple):
    total_tokens: int
    borrowed_tokens: int
    waiting: int
    paused_until: float | None
    limit: float                # the algorithm's estimate (total: floor)
    latency: float | None       # the last window's mean hold time
    long_latency: float | None  # the algorithm's long-term one, if any
    samples: int                # holds sampled (drops among them)
    drops: int


class KeyedLimiterStatistics(NamedTuple):
    tokens_per_key: int | float
    keys: int               # keys in use (holders, waiters or a pause)
    borrowed_tokens: int    # over all keys
    waiting: int


class RateLimiterStatistics(NamedTuple):
    rate: float
    per: float
    burst: int
    waiting: int
    paused_until: float | None = None


class GroupStatistics(NamedTuple):
    spawned: int
    running: int
    waiting: int
    done: int
    failed: int


class _Suspended:
    def __await__(self):
        yield


async def waiting_for_tokens(limiter):
    """What a BoundedTaskGroup task whose coroutine has not started yet
    shows in its stack, repr and call graph: it waits for a token of
    ``limiter``. A stand-in, never resumed."""
    await _Suspended()


class _Unraisable:
    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __del__(self) -> None:
        raise self.error


def install_hint(extra: str) -> str:
    """How to install an extra, from the package index or, until there is a
    published release, from a checkout or an unpacked sdist."""
    return (f"pip install 'taskbound[{extra}]', or from a checkout: "
            f"pip install '.[{extra}]'")


def write_unraisable(error: BaseException) -> None:
    """Reports an error nobody can be given, through sys.unraisablehook
    (what the C core's PyErr_WriteUnraisable does): an error in cleanup
    that must not replace the one already being raised."""
    _Unraisable(error)     # its __del__ raises, at once


def waiting_stand_in(limiter):
    """A ``waiting_for_tokens(limiter)`` coroutine, suspended in its wait."""
    stand_in = waiting_for_tokens(limiter)
    stand_in.send(None)
    return stand_in


def check_total_tokens(value: object) -> int | float:
    """Return a valid ``total_tokens`` (an int >= 0 or math.inf), or raise."""
    if isinstance(value, float):
        if value == math.inf:
            return value
        raise TypeError(
            f"total_tokens must be an int or math.inf, not {value!r}")
    if isinstance(value, bool):
        raise TypeError(f"total_tokens must be an int or math.inf, not {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError("total_tokens must be an int or math.inf, "
                        f"not {type(value).__name__}") from None
    if number < 0:
        raise ValueError(f"total_tokens must be >= 0, not {number}")
    return number


def _check_count(name: str, expected: str, value: object) -> int:
    """Return ``value`` if it is an int >= 1 (not a bool or float), or raise."""
    if isinstance(value, (bool, float)):
        raise TypeError(f"{name} must be {expected}, not {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be {expected}, "
                        f"not {type(value).__name__}") from None
    if number < 1:
        raise ValueError(f"{name} must be >= 1, not {number}")
    return number


def check_tokens(n: object) -> int:
    """Return ``n`` if it is a count of tokens (an int >= 1), or raise."""
    if n.__class__ is int and n == 1:
        return 1
    return _check_count("n", "an int", n)


def check_weight(source, n: object) -> int:
    """Return ``n`` if ``source`` can ever grant that many tokens at once
    (an int >= 1, within what the kind of source allows), or raise."""
    n = check_tokens(n)
    if n != 1:
        source._check_weight(n)
    return n


def check_within_total(source, n: int, total: int | float) -> None:
    """A Limiter's rule for n, wherever its tokens live: more than a finite
    total can never be granted (a total of 0 is a closed limiter, not a
    small one: everyone waits)."""
    if n > total > 0:
        raise ValueError(
            f"n={n} is more than total_tokens={total} of {source!r}: it "
            "could never be granted")


def check_tokens_per_key(value: object) -> int | float:
    """Return a valid ``tokens_per_key`` (an int >= 1 or math.inf)."""
    if isinstance(value, float) and value == math.inf:
        return value
    if isinstance(value, float):
        raise TypeError(
            f"tokens_per_key must be an int or math.inf, not {value!r}")
    return _check_count("tokens_per_key", "an int or math.inf", value)


def check_limit(value: object) -> int:
    """Return a valid group ``limit`` (an int >= 1), or raise."""
    return _check_count("limit", "an int or None", value)


# What asyncio's TaskGroup calls base errors (it lets them through at once,
# not in an ExceptionGroup); the C core's is_interrupt().
BASE_ERRORS = (KeyboardInterrupt, SystemExit)


def is_base_error(exc: BaseException) -> bool:
    return isinstance(exc, BASE_ERRORS)


_NOT_A_LIMITER = ("limiter must be a taskbound limiter (Limiter, RateLimiter, "
                  "RedisLimiter, ...) or a sequence of them, not ")


def limiters_in_rank_order(first: tuple, limiter, source_type) -> tuple:
    """The token sources a task takes tokens of: those in `first` (a
    group's own Limiter, or a group's limiters) and `limiter` (None, a `source_type` or a list or
    tuple of them), each once, in rank order: the one global order that
    keeps claims from deadlocking each other. (As the C core's
    sources_in_rank_order.)"""
    if limiter is None:
        given = ()
    elif isinstance(limiter, source_type):
        given = (limiter,)
    elif isinstance(limiter, (list, tuple)):
        given = tuple(limiter)
        for item in given:
            if not isinstance(item, source_type):
                raise TypeError(f"{_NOT_A_LIMITER}a sequence holding "
                                f"{type(item).__name__}")
    else:
        raise TypeError(_NOT_A_LIMITER + type(limiter).__name__)
    unique = {id(item): item for item in (*first, *given)}
    return tuple(sorted(unique.values(), key=lambda item: item._rank))


def costs_in_rank_order(limiters: tuple, cost) -> tuple | None:
    """The tokens a task takes of each of ``limiters`` (its claim's, in rank
    order) by ``cost``: None (one of each) or a mapping of some of them to
    a count. None when every count is 1. A count the limiter could never
    grant, or a limiter the task does not take, is refused."""
    if cost is None:
        return None
    if not isinstance(cost, collections.abc.Mapping):
        raise TypeError("cost must be a mapping of limiter to tokens, not "
                        + type(cost).__name__)
    rank_of = {id(limiter): i for i, limiter in enumerate(limiters)}
    costs = [1] * len(limiters)
    for limiter, n in cost.items():
        i = rank_of.get(id(limiter))
        if i is None:
            raise ValueError(
                f"cost names {limiter!r}, which this task does not take: "
                "give it in limiter= too (or to the group)")
        costs[i] = check_weight(limiter, n)
    return tuple(costs) if any(n != 1 for n in costs) else None


def check_positive(name: str, value: object) -> float:
    """Return a valid ``rate`` or ``per`` (a finite number > 0), or raise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"{name} must be a finite number > 0, not {value!r}")
    return number


def check_pause(value: object) -> float:
    """Return a valid pause() length (a finite number >= 0), or raise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"seconds must be a number, not {type(value).__name__}")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(
            f"seconds must be a finite number >= 0, not {value!r}")
    return seconds


def check_burst(value: object) -> int:
    """Return a valid ``burst`` (an int >= 1), or raise."""
    return _check_count("burst", "an int", value)


def check_awaitable(item):
    """item, if a stream can await it; a TypeError otherwise."""
    if not inspect.isawaitable(item):
        raise TypeError(f"an awaitable was expected, got {item!r}")
    return item


def check_iterable(items) -> None:
    if not hasattr(items, "__aiter__") and not hasattr(items, "__iter__"):
        raise TypeError("items must be an iterable or an async iterable, "
                        f"not {type(items).__name__}")


def close_coroutine(item) -> None:
    """Closes a coroutine that will never run (anything else is left)."""
    if inspect.iscoroutine(item):
        item.close()


# How late a RateLimiter's timer may fire and its waiters still start on
# the schedule (both implementations read it here).
TIMER_LATENESS = 0.005


class RateParameters:
    """A rate limiter's rate, per and burst, checked once, with their
    accessors, statistics and the burst's rule for n: what the reference
    RateLimiter and RedisRateLimiter share (the C RateLimiter keeps its own
    in C)."""

    def _set_rate_parameters(self, rate, per, burst) -> None:
        self._rate = check_positive("rate", rate)
        self._per = check_positive("per", per)
        self._burst = check_burst(burst)

    @property
    def rate(self) -> float:
        return self._rate

    def _check_weight(self, n: int) -> None:
        if n > self._burst:
            raise ValueError(
                f"n={n} is more than burst={self._burst} of {self!r}: a start "
                "of that many units could never be made")

    @property
    def per(self) -> float:
        return self._per

    @property
    def burst(self) -> int:
        return self._burst

    def _statistics_with(self, waiting: int,
                         paused_until: float | None = None
                         ) -> RateLimiterStatistics:
        return RateLimiterStatistics(self._rate, self._per, self._burst,
                                     waiting, paused_until)
