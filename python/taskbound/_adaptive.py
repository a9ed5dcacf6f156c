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

# Probe's fixed parts: the most a probe's gain grows to; the queue (a share
# of the no-load latency) it allows; the z-score of a significant change;
# how far over the prediction two windows must be for a fast cut, and in
# noise deviations; the share of a probe's step that must show as a rise,
# and of a climb's as more L / R;
# samples over which drops are averaged and the no-load latency pooled;
# a round's fewest windows and most samples.
PROBE_MAX_GAIN = 0.4
PROBE_QUEUE = 0.05
PROBE_Z = 2.0
PROBE_FAST = 0.3
PROBE_FAST_Z = 4.0
PROBE_HOT_WINDOWS = 2
PROBE_RISE = 0.25
PROBE_CLIMB_SHOW = 0.35
PROBE_DROP_HORIZON = 2000
PROBE_POOL = 2000
PROBE_MIN_WINDOWS = 3
PROBE_MAX_SAMPLES = 3000
PROBE_CLIMB_PRECISION = 3.0     # times precision, for a climb's round
PROBE_CUT_PRECISION = 2.0       # and for the round after a cut

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


class Probe(Algorithm):
    """Probes the limit and keeps the one past which the server delivers no
    more: by Little's law a saturated client gets L / R requests a second
    from L in flight at mean latency R, which grows with L up to the
    server's capacity and no further. Rounds of windows (each until its
    mean latency is known within ``precision``) compare adjacent limits
    only, so nothing depends on a long-term average that a lasting queue
    drags up (Gradient2's settling 40-60% above a capacity that halved).

    From the start the limit grows by ``climb`` a round while L / R keeps
    up with it, then steps back to where it stopped. From there a round
    at the base alternates with a probe ``gain`` above it (no rise in
    latency: the probe is the new base, and the next probe goes twice as
    far) and one ``gain`` below (latency falling with the limit: the base
    was past the capacity, by as much as it fell). A round at the base
    whose latency is over the no-load latency (pooled from probes that
    found no queue) by more than 5% and its noise, and two windows in a row
    30% over what the last base round predicts (a capacity that halved),
    cut the limit to where the latency says the capacity is. Drops past
    ``drop_budget`` of the last 2000 samples multiply it by ``backoff``."""

    def __init__(self, *, gain: float = 0.05, climb: float = 1.5,
                 precision: float = 0.02, backoff: float = 0.9,
                 drop_budget: float = 0.01) -> None:
        self.gain = _check_ratio("gain", gain, 0.0, PROBE_MAX_GAIN)
        self.climb = _check_ratio("climb", climb, 1.0, math.inf)
        if climb == 1.0:
            raise ValueError("climb must be above 1.0")
        self.precision = _check_ratio("precision", precision, 0.0, 1.0)
        self.backoff = _check_ratio("backoff", backoff, 0.0, 1.0)
        if backoff == 1.0:
            raise ValueError("backoff must be below 1.0")
        self.drop_budget = _check_ratio("drop_budget", drop_budget, 0.0, 1.0,
                                        low_open=False)
        self.reset()

    def __repr__(self) -> str:
        return (f"Probe(gain={self.gain}, climb={self.climb}, precision="
                f"{self.precision}, backoff={self.backoff}, drop_budget="
                f"{self.drop_budget})")

    def reset(self) -> None:
        self.long_latency = None    # the pooled no-load latency
        self._pooled = 0            # samples behind it (at most PROBE_POOL)
        self._state = "climb"
        self._climbed = None        # (limit, latency, samples): last climb
        self._reference = None      # (limit, latency, error): last base round
        self._base = None
        self._knee = None           # where the last probe found a queue
        self._probe_gain = self.gain
        self._next_probe = "down"
        self._cut_from = None       # (limit, latency) before the last cut
        self._skip = 0              # samples of holds granted before a move
        self._cv = None             # a sample's spread over its mean
        self._drop_rate = 0.0
        self._clear_hot()
        self._new_round()

    def _new_round(self) -> None:
        self._windows = 0
        self._n = 0
        self._sum = 0.0             # of n x mean, over the round's windows
        self._sum_squares = 0.0     # of n x mean ** 2

    def _clear_hot(self) -> None:
        self._hot = self._hot_n = 0
        self._hot_sum = 0.0

    def update(self, limit: float, window: Window) -> float:
        samples, drops = window.samples, window.drops
        share = drops / samples if samples else 0.0
        self._drop_rate += ((share - self._drop_rate)
                            * min(1.0, samples / PROBE_DROP_HORIZON))
        if drops and self._drop_rate > self.drop_budget:
            self._cut_from = None
            self._base = limit * self.backoff
            return self._go("cruise", limit, self._base)
        n = samples - drops
        mean = window.mean_latency
        if n <= 0 or mean <= 0.0:
            return limit
        if self._skip > 0:          # holds granted before the last move
            self._skip -= samples
            return limit
        # A capacity that halved shows even where the load is under the
        # limit; anything finer needs the limit to be the bound.
        cut = self._fast_cut(min(limit, float(window.in_flight)), n, mean)
        if cut is not None:
            return cut
        if window.in_flight < int(limit):
            return limit            # the load, not the server, was the bound
        self._windows += 1
        self._n += n
        self._sum += n * mean
        self._sum_squares += n * mean * mean
        latency = self._sum / self._n
        if self._windows >= 2:
            # The spread of the window means within the round gives a
            # sample's, so the core keeps no sum of squares.
            variance = max(0.0, self._sum_squares - latency * self._sum) / (
                self._windows - 1)
            cv = math.sqrt(variance) / latency
            self._cv = cv if self._cv is None else self._cv + (cv - self._cv) * 0.1
        if self._windows < PROBE_MIN_WINDOWS or self._cv is None:
            return limit
        error = self._cv / math.sqrt(self._n)
        if error > self._precision_wanted() and self._n < PROBE_MAX_SAMPLES:
            return limit
        return getattr(self, "_" + self._state)(limit, latency, error)

    def _precision_wanted(self) -> float:
        # A climb only has to see growth stop, and the round after a cut
        # only to check it: both can be rougher than a probe.
        if self._state == "climb":
            return PROBE_CLIMB_PRECISION * self.precision
        if self._cut_from is not None:
            return PROBE_CUT_PRECISION * self.precision
        return self.precision

    def _fast_cut(self, load: float, n: int, mean: float) -> float | None:
        """A capacity that halved, seen within two windows of ``load`` in
        flight at most."""
        if (self._reference is None or not self._cv or self._state == "climb"
                or self._cut_from is not None):
            return None             # (a cut's own round checks the cut)
        base_limit, base_latency, _ = self._reference
        predicted = base_latency * max(1.0, load / base_limit)
        excess = mean / predicted - 1.0
        if excess <= max(PROBE_FAST, PROBE_FAST_Z * self._cv / math.sqrt(n)):
            self._clear_hot()
            return None
        self._hot += 1
        self._hot_n += n
        self._hot_sum += n * mean
        if self._hot < PROBE_HOT_WINDOWS:
            return None
        latency = self._hot_sum / self._hot_n
        self._clear_hot()
        return self._cut(load, min(load, base_limit) * base_latency / latency,
                         latency)

    def _go(self, state: str, limit: float, new: float) -> float:
        self._state = state
        self._new_round()
        self._skip = limit
        return new

    def _cut(self, limit: float, new: float, latency: float) -> float:
        self._cut_from = (limit, latency)
        self._base = self._knee = max(1.0, new)
        self._next_probe = "down"   # so the round after it probes up
        self._probe_gain = self.gain
        return self._go("cruise", limit, self._base)

    def _pool(self, latency: float, n: int, fresh: bool = False) -> None:
        """Adds a round that found no queue to the no-load latency."""
        if fresh or self.long_latency is None:
            self.long_latency, self._pooled = latency, n
            return
        self._pooled += n
        self.long_latency += (latency - self.long_latency) * n / self._pooled
        self._pooled = min(self._pooled, PROBE_POOL)

    def _climb(self, limit: float, latency: float, error: float) -> float:
        climbed = self._climbed
        if climbed is None:
            self._climbed = (limit, latency, self._n)
            return self._go("climb", limit, limit * self.climb)
        last_limit, last_latency, last_n = climbed
        # Over a third of the growth in the limit has to show in L / R: half
        # was within two errors of a round's mean when latency is noisy,
        # and a climb that stops at a third of the capacity takes minutes
        # of probes to get back.
        wanted = 1.0 + PROBE_CLIMB_SHOW * (limit / last_limit - 1.0)
        if limit / latency >= last_limit / last_latency * wanted:
            self._pool(last_latency, last_n)    # it was below the knee
            self._climbed = (limit, latency, self._n)
            return self._go("climb", limit, limit * self.climb)
        # It stopped growing: the knee is past the last round, where the
        # latency says.
        self._pool(last_latency, last_n)
        self._reference = (last_limit, last_latency, error)
        return self._cut(limit, min(limit, limit * last_latency / latency),
                         latency)

    def _cruise(self, limit: float, latency: float, error: float) -> float:
        no_load = self.long_latency
        if self._cut_from is not None:
            cut_limit, cut_latency = self._cut_from
            self._cut_from = None
            queue_gone = cut_latency * min(1.0, limit / cut_limit)
            if latency > (cut_latency + queue_gone) / 2:
                # Latency fell less than half as far as a queue's going
                # would take it: a slower server, not a queue, and its
                # latency is the new no-load one.
                self._pool(latency, self._n, fresh=True)
                no_load = latency
        if no_load is not None:
            noise = math.hypot(error, self._cv / math.sqrt(self._pooled))
            if latency > no_load * (1.0 + PROBE_QUEUE + PROBE_Z * noise):
                return self._cut(limit, limit * no_load / latency, latency)
        self._reference = (limit, latency, error)
        self._next_probe = "down" if self._next_probe == "up" else "up"
        if self._next_probe == "up":
            return self._go("up", limit, self._base * (1.0 + self._probe_gain))
        return self._go("down", limit, self._base * (1.0 - self.gain))

    def _up(self, limit: float, latency: float, error: float) -> float:
        base_limit, base_latency, _ = self._reference
        rise = latency / base_latency
        if rise <= 1.0 + PROBE_RISE * (limit / base_limit - 1.0):
            self._base = limit      # no queue even here
            if (self._knee is not None
                    and limit > self._knee * (1.0 + 2.0 * self.gain)):
                self._knee = None   # what it was, it is no more
            self._probe_gain = (self.gain if self._knee is not None else
                                min(2.0 * self._probe_gain, PROBE_MAX_GAIN))
            self._reference = (limit, latency, error)
            self._next_probe = "down"
            return self._go("up", limit,
                            self._base * (1.0 + self._probe_gain))
        self._probe_gain = self.gain
        self._base = max(base_limit, min(limit, limit / rise))
        self._knee = limit / rise
        return self._go("cruise", limit, self._base)

    def _down(self, limit: float, latency: float, error: float) -> float:
        base_limit, base_latency, base_error = self._reference
        fall = latency / base_latency
        knee = base_limit * fall
        if knee < base_limit * (1.0 - PROBE_Z * math.hypot(error, base_error)):
            self._base = max(limit, knee)
            if knee <= limit * (1.0 + PROBE_RISE * (1.0 - limit / base_limit)):
                self._reference = (limit, latency, error)   # a queue still
                return self._go("down", limit,
                                self._base * (1.0 - self.gain))
        self._pool(latency, self._n)
        return self._go("cruise", limit, self._base)

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

