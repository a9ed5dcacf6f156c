import asyncio
import contextvars
from collections.abc import Awaitable, Sequence
from types import TracebackType
from typing import Literal, Self, TypeVar

from ._common import DeadlockError as DeadlockError
from ._common import GroupStatistics as GroupStatistics
from ._common import LimiterStatistics as LimiterStatistics
from ._common import WouldBlock as WouldBlock

_T = TypeVar("_T")

implementation: Literal["c", "python"]
__version__: str

class Limiter:
    def __init__(self, total_tokens: int | float) -> None: ...
    @property
    def total_tokens(self) -> int | float: ...
    @total_tokens.setter
    def total_tokens(self, value: int | float) -> None: ...
    @property
    def borrowed_tokens(self) -> int: ...
    @property
    def available_tokens(self) -> int | float: ...
    def statistics(self) -> LimiterStatistics: ...
    def locked(self) -> bool: ...
    async def acquire(self) -> None: ...
    def acquire_nowait(self) -> None: ...
    def release(self) -> None: ...
    async def __aenter__(self) -> None: ...
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

class BoundedTaskGroup:
    def __init__(
        self,
        limit: int | None = None,
        *,
        limiter: Limiter | Sequence[Limiter] | None = None,
    ) -> None: ...
    @property
    def limit(self) -> int | None: ...
    @property
    def limiters(self) -> tuple[Limiter, ...]: ...
    def statistics(self) -> GroupStatistics: ...
    async def __aenter__(self) -> Self: ...
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None: ...
    async def spawn(
        self,
        coro: Awaitable[_T],
        *,
        name: str | None = None,
        context: contextvars.Context | None = None,
    ) -> asyncio.Task[_T]: ...
    def create_task(
        self,
        coro: Awaitable[_T],
        *,
        name: str | None = None,
        context: contextvars.Context | None = None,
    ) -> asyncio.Task[_T]: ...
    def cancel(self) -> None: ...
