"""An asyncio loop on a virtual clock: for the tests of timing and the
bench's simulations, where a run must be exact and repeatable and take no
longer than its work."""

from __future__ import annotations

import asyncio
import math
import selectors


class VirtualClockSelector(selectors.DefaultSelector):
    """Instead of sleeping until the next timer, jumps the clock to it; with
    a `tick`, to the next multiple of it at or after it, as epoll rounds a
    wait up to the millisecond, so timers fire late as on a real loop."""

    def __init__(self, tick: float = 0.0) -> None:
        super().__init__()
        self.now = 0.0
        self.tick = tick

    def select(self, timeout=None):
        if timeout is None:
            return super().select(None)
        events = super().select(0)
        if not events and timeout > 0:
            if self.tick:
                timeout = math.ceil(timeout / self.tick) * self.tick
            self.now += timeout
        return events


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """asyncio's loop on a clock that only moves when the loop would wait:
    timings in tests become exact."""

    def __init__(self, tick: float = 0.0) -> None:
        self._virtual = VirtualClockSelector(tick)
        super().__init__(selector=self._virtual)

    def time(self) -> float:
        return self._virtual.now
