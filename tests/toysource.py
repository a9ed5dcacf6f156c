"""A limiter whose tokens live "elsewhere" only in name: a plain counting
limiter written on ExternalSource, to test the protocol a claim drives
without a server (and to put the C core's calls into it under valgrind)."""

from __future__ import annotations

import collections


def toy_source_type(base: type) -> type:
    class ToySource(base):
        def __init__(self, total: int) -> None:
            super().__init__()
            self.total = total
            self.borrowed = 0
            self.line: collections.deque = collections.deque()
            self.fail_in = ""           # the method that is to raise

        def _fault(self, method: str) -> None:
            """Where each operation may be made to fail."""
            if self.fail_in == method:
                raise OSError(f"{method} failed")

        def _try_take(self, loop) -> bool:
            self._fault("_try_take")
            if self.line or self.borrowed >= self.total:
                return False
            self.borrowed += 1
            return True

        def _enqueue(self, loop):
            self._fault("_enqueue")
            future = loop.create_future()
            self.line.append(future)
            return future

        def _dequeue(self, future) -> None:
            self._fault("_dequeue")
            try:
                self.line.remove(future)
            except ValueError:
                pass

        def _pass_on(self) -> None:
            self._give_back()

        def _give_back(self) -> None:
            self._fault("_give_back")
            self._hand_on()

        def _hand_on(self) -> None:
            self.borrowed -= 1
            while self.line:
                future = self.line.popleft()
                if not future.done():
                    self.borrowed += 1
                    future.set_result(True)
                    break

    return ToySource
