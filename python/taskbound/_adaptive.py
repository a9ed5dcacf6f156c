"""AdaptiveLimiter: a Limiter whose total moves by itself, from the hold
times and the overload errors of its holders, on either implementation's
Limiter.

The core gathers the samples on every give-back (HoldSampler in C,
_HoldSampler in the reference) and hands them over a window at a time; an
algorithm (AIMD, Gradient2, or a subclass of Algorithm) turns each window
into a new limit. So the per-sample cost is the core's, and Python runs
once per window: about once per round trip.
"""

from __future__ import annotations

import copy
import math
from asyncio import current_task
from typing import Callable, NamedTuple

from ._common import AdaptiveLimiterStatistics, _check_count

# A window is at least this many samples (else one round trip's, the
# limit's worth): fewer make each update noise.
MIN_WINDOW = 10

# Windows over which Gradient2's long-term latency is a plain mean, before
# it becomes an exponential one.
WARM_UP = 10

# Holders that end with these are drops, unless overload= says otherwise.
DEFAULT_OVERLOAD = (TimeoutError, ConnectionError)


class Window(NamedTuple):
    """What an algorithm sees once per window of samples."""
    samples: int            # holds that ended, not cancelled (drops too)
    drops: int              # of them, overloaded
    mean_latency: float     # of those that were not drops (0.0: none)
    min_latency: float      # the least of them (0.0: none)
    in_flight: int          # the most tokens held at once meanwhile


class Algorithm:
    """Turns a window of samples into a new limit. A subclass overrides
    update(); each AdaptiveLimiter works on a copy of the object it is
    given (reset()), so one algorithm object can configure many."""

    def update(self, limit: float, window: Window) -> float:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget what past windows taught (a fresh copy calls it)."""

    # For statistics(): the latency the algorithm holds as no-load, if any.
    long_latency: float | None = None

    def _fresh(self) -> "Algorithm":
        algorithm = copy.copy(self)
        algorithm.reset()
        return algorithm


def _check_ratio(name: str, value: object, low: float, high: float,
                 *, low_open: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not "
                        f"{type(value).__name__}")
    value = float(value)
    if not (low < value <= high if low_open else low <= value <= high):
        raise ValueError(f"{name} must be in {'(' if low_open else '['}"
                         f"{low}, {high}], not {value!r}")
    return value


class AIMD(Algorithm):
    """Additive increase, multiplicative decrease: a window with a drop (or
    whose mean latency is over ``timeout``) multiplies the limit by
    ``backoff``; a window that used at least half the limit adds
    ``increase``; one that used less (the load, not the server, was the
    bound) leaves it."""

    def __init__(self, *, increase: float = 1.0, backoff: float = 0.9,
                 timeout: float = math.inf) -> None:
        self.increase = _check_ratio("increase", increase, 0.0, math.inf)
        self.backoff = _check_ratio("backoff", backoff, 0.0, 1.0,
                                    low_open=True)
        if backoff == 1.0:
            raise ValueError("backoff must be below 1.0")
        self.timeout = _check_ratio("timeout", timeout, 0.0, math.inf)

    def __repr__(self) -> str:
        return (f"AIMD(increase={self.increase}, backoff={self.backoff}, "
                f"timeout={self.timeout})")

    def update(self, limit: float, window: Window) -> float:
        if window.drops or window.mean_latency > self.timeout:
            return limit * self.backoff
        if window.in_flight * 2 >= limit:
            return limit + self.increase
        return limit


class Gradient2(Algorithm):
    """Netflix's Gradient2: the ratio of a long-term average of latency to
    the latest window's (``tolerance`` times it, within [0.5, 1]) scales
    the limit, plus a ``queue_size`` allowance, smoothed by
    ``smoothing``. Latency rising above ``tolerance`` times its long-term
    average (a queue forming) brings the limit down; at no more than that,
    it grows by the allowance. The long-term average follows over
    ``long_window`` windows, and drops faster when latency falls back. A
    window with drops multiplies the limit by ``backoff`` once the share of
    drops over the last windows is past ``drop_budget`` (Netflix's ignores
    drops; an error budget needs them, and a few slow requests timing out
    by themselves must not halve it). The default tolerance is 1.05, not
    Netflix's 1.5, which lets a queue of half the capacity form in front
    of the server: the bench's simulation showed p99 1.5 times the best
    fixed limit's with it."""

    def __init__(self, *, tolerance: float = 1.05, smoothing: float = 0.2,
                 long_window: int = 600, queue_size: float = 4.0,
                 backoff: float = 0.9, drop_budget: float = 0.01) -> None:
        self.tolerance = _check_ratio("tolerance", tolerance, 1.0, math.inf,
                                      low_open=False)
        self.smoothing = _check_ratio("smoothing", smoothing, 0.0, 1.0)
        self.long_window = _check_count("long_window", "an int", long_window)
        self.queue_size = _check_ratio("queue_size", queue_size, 0.0,
                                       math.inf, low_open=False)
        self.backoff = _check_ratio("backoff", backoff, 0.0, 1.0)
        self.drop_budget = _check_ratio("drop_budget", drop_budget, 0.0, 1.0,
                                        low_open=False)
        self.reset()

    def __repr__(self) -> str:
        return (f"Gradient2(tolerance={self.tolerance}, smoothing="
                f"{self.smoothing}, long_window={self.long_window}, "
                f"queue_size={self.queue_size}, backoff={self.backoff})")

    def reset(self) -> None:
        self.long_latency = None
        self.drop_rate = 0.0
        self._windows = 0

    def update(self, limit: float, window: Window) -> float:
        # Drops over the last windows, a share of samples: a few (slow
        # requests timing out by themselves) are within the budget; a
        # burst of them (503s) is over it at once.
        share = window.drops / window.samples if window.samples else 0.0
        self.drop_rate += (share - self.drop_rate) * 0.1
        if window.drops and self.drop_rate > self.drop_budget:
            return limit * self.backoff
        short = window.mean_latency
        if short <= 0.0:
            return limit
        # The long-term average: a plain mean over the first WARM_UP
        # windows, then exponential over long_window of them.
        self._windows += 1
        long = self.long_latency
        if long is None:
            long = short
        elif self._windows <= WARM_UP:
            long += (short - long) / self._windows
        else:
            long += (short - long) * 2.0 / (self.long_window + 1)
        if long / short > 2.0:
            long *= 0.95        # latency is back down: follow it sooner
        self.long_latency = long
        if window.in_flight * 2 < limit:
            return limit        # the load, not the server, was the bound
        gradient = max(0.5, min(1.0, self.tolerance * long / short))
        target = limit * gradient + self.queue_size
        return limit * (1.0 - self.smoothing) + target * self.smoothing


def _overload_test(overload) -> Callable[[BaseException], bool]:
    if isinstance(overload, type) and issubclass(overload, BaseException):
        overload = (overload,)
    if isinstance(overload, tuple):
        for kind in overload:
            if not (isinstance(kind, type) and issubclass(kind, BaseException)):
                raise TypeError("overload must be exception types or a "
                                f"predicate, not {kind!r} among them")
        kinds = overload
        return lambda error: isinstance(error, kinds)
    if callable(overload):
        return overload
    raise TypeError("overload must be an exception type, a tuple of them or "
                    f"a predicate, not {overload!r}")


class AdaptiveLimiter:
    """A Limiter whose ``total_tokens`` moves by itself within
    [``min_tokens``, ``max_tokens``]: each hold of a token (grant to
    give-back) is a latency sample, a holder ending with an error that
    ``overload`` accepts (exception types or a predicate; by default
    timeouts and connection errors) is a drop, and a cancelled hold is no
    sample. Group children and stream items report by themselves; a task
    with ``acquire()``/``async with`` can call ``mark_overload()`` (after
    handling a 429 itself, say). ``on_change(old, new)`` is called when
    the total changes."""

    _limiter_type: type        # the implementation's Limiter (adaptive_type)

    def __init__(self, initial: int, *, min_tokens: int = 1,
                 max_tokens: int = 1000, algorithm: Algorithm | None = None,
                 overload=DEFAULT_OVERLOAD,
                 on_change: Callable[[int, int], object] | None = None
                 ) -> None:
        min_tokens = _check_count("min_tokens", "an int", min_tokens)
        max_tokens = _check_count("max_tokens", "an int", max_tokens)
        initial = _check_count("initial", "an int", initial)
        if not min_tokens <= initial <= max_tokens:
            raise ValueError(f"initial must be within [min_tokens, "
                             f"max_tokens] = [{min_tokens}, {max_tokens}], "
                             f"not {initial}")
        if algorithm is None:
            algorithm = Gradient2()
        if not isinstance(algorithm, Algorithm):
            raise TypeError("algorithm must be an AIMD, a Gradient2 or "
                            "another taskbound.Algorithm, not "
                            f"{type(algorithm).__name__}")
        if on_change is not None and not callable(on_change):
            raise TypeError("on_change must be callable or None")
        is_overload = _overload_test(overload)
        super().__init__(initial)
        self._min = min_tokens
        self._max = max_tokens
        self._limit = float(initial)
        self._algorithm = algorithm._fresh()
        self._on_change = on_change
        self._is_overload = is_overload
        self._samples = self._drops = 0
        self._latency = None
        self._sample_holds(self._on_window, is_overload, self._window_size())

    def __repr__(self) -> str:
        return (f"<AdaptiveLimiter total_tokens={self.total_tokens} "
                f"borrowed={self.borrowed_tokens} "
                f"algorithm={self._algorithm!r}>")

    @property
    def total_tokens(self) -> int:
        return self._limiter_type.total_tokens.__get__(self)

    @total_tokens.setter
    def total_tokens(self, value: int) -> None:
        """Sets the limit by hand; the algorithm goes on from there."""
        value = _check_count("total_tokens", "an int", value)
        if not self._min <= value <= self._max:
            raise ValueError(f"total_tokens must be within [min_tokens, "
                             f"max_tokens] = [{self._min}, {self._max}], "
                             f"not {value}")
        self._limit = float(value)
        self._set_total(value)

    @property
    def algorithm(self) -> Algorithm:
        return self._algorithm

    @property
    def min_tokens(self) -> int:
        return self._min

    @property
    def max_tokens(self) -> int:
        return self._max

    def mark_overload(self) -> None:
        """The current task's hold ends as a drop, however it ends (for a
        task that handled the server's push-back itself)."""
        try:
            task = current_task()
        except RuntimeError:            # no loop running
            task = None
        if task is None:
            raise RuntimeError("mark_overload() is called from a task that "
                               "holds a token")
        self._mark_overload(task)

    def statistics(self) -> AdaptiveLimiterStatistics:
        stats = super().statistics()
        samples, drops = self._window_so_far()
        return AdaptiveLimiterStatistics(
            *stats, limit=self._limit, latency=self._latency,
            long_latency=self._algorithm.long_latency,
            samples=self._samples + samples, drops=self._drops + drops)

    def _window_size(self) -> int:
        return max(MIN_WINDOW, math.ceil(self._limit))

    def _on_window(self, samples: int, drops: int, mean: float,
                   least: float, in_flight: int) -> int:
        self._samples += samples
        self._drops += drops
        if samples > drops:
            self._latency = mean
        window = Window(samples, drops, mean, least, in_flight)
        limit = float(self._algorithm.update(self._limit, window))
        if not math.isnan(limit):
            self._limit = min(float(self._max), max(float(self._min), limit))
        self._set_total(max(self._min, int(self._limit)))
        return self._window_size()

    def _set_total(self, total: int) -> None:
        old = self.total_tokens
        if total == old:
            return
        self._limiter_type.total_tokens.__set__(self, total)
        if self._on_change is not None:
            self._on_change(old, total)


def adaptive_type(limiter_type: type) -> type:
    """AdaptiveLimiter on an implementation's Limiter."""
    cls = type("AdaptiveLimiter", (AdaptiveLimiter, limiter_type),
               {"_limiter_type": limiter_type, "__doc__":
                AdaptiveLimiter.__doc__, "__module__": "taskbound"})
    return cls

