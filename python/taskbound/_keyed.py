"""KeyedLimiter: one Limiter per key (4 connections per host), made on first
use and forgotten when idle, on either implementation's Limiter."""

from __future__ import annotations

from ._common import KeyedLimiterStatistics, check_tokens_per_key

# The fewest limiters kept before idle ones are swept out.
_FIRST_SWEEP = 64


class KeyedLimiter:
    """``keyed[key]`` is the Limiter of ``key``, with ``tokens_per_key``
    tokens: made on first use, the same object while it has holders,
    waiters or a pause, and forgotten once idle. Memory follows the keys in
    use, not every key ever seen: idle limiters are swept out whenever the
    number kept has doubled since the last sweep. Take a key's limiter
    where it is used (``limiter=keyed[host]``), not ahead of time: an idle
    one kept aside may have been forgotten, and the key then has two."""

    _limiter_type: type        # the implementation's Limiter (keyed_type)

    def __init__(self, tokens_per_key: int | float) -> None:
        self._tokens_per_key = check_tokens_per_key(tokens_per_key)
        self._limiters: dict = {}
        self._sweep_at = _FIRST_SWEEP

    @property
    def tokens_per_key(self) -> int | float:
        return self._tokens_per_key

    def __getitem__(self, key):
        limiter = self._limiters.get(key)
        if limiter is None:
            if len(self._limiters) >= self._sweep_at:
                self._sweep()
            limiter = self._limiter_type(self._tokens_per_key)
            self._limiters[key] = limiter
        return limiter

    def __contains__(self, key) -> bool:
        limiter = self._limiters.get(key)
        return limiter is not None and not _idle(limiter)

    def __iter__(self):
        """The keys in use (with holders, waiters or a pause)."""
        return iter([key for key, limiter in self._limiters.items()
                     if not _idle(limiter)])

    def __len__(self) -> int:
        return sum(1 for limiter in self._limiters.values()
                   if not _idle(limiter))

    def statistics(self) -> KeyedLimiterStatistics:
        keys = borrowed = waiting = 0
        for limiter in self._limiters.values():
            stats = limiter.statistics()
            if not _idle_by(stats):
                keys += 1
                borrowed += stats.borrowed_tokens
                waiting += stats.waiting
        return KeyedLimiterStatistics(self._tokens_per_key, keys, borrowed,
                                      waiting)

    def __repr__(self) -> str:
        return (f"<KeyedLimiter tokens_per_key={self._tokens_per_key} "
                f"keys={len(self)}>")

    def _sweep(self) -> None:
        self._limiters = {key: limiter
                          for key, limiter in self._limiters.items()
                          if not _idle(limiter)}
        self._sweep_at = max(_FIRST_SWEEP, 2 * len(self._limiters))


def _idle(limiter) -> bool:
    """Nothing of it is in use: it can be made anew when next asked for."""
    return _idle_by(limiter.statistics())


def _idle_by(stats) -> bool:
    return not (stats.borrowed_tokens or stats.waiting
                or stats.paused_until is not None)


def keyed_type(limiter_type: type) -> type:
    """KeyedLimiter on one implementation's Limiter."""
    return type("KeyedLimiter", (KeyedLimiter,),
                {"_limiter_type": limiter_type, "__module__": "taskbound"})
