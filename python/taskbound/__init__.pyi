import asyncio
import contextvars
import sys
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Hashable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from types import TracebackType
from typing import Any, Literal, NamedTuple, Self, TypeVar, overload

from ._common import DeadlockError as DeadlockError
from ._common import GroupStatistics as GroupStatistics
from ._common import AdaptiveLimiterStatistics as AdaptiveLimiterStatistics
from ._common import KeyedLimiterStatistics as KeyedLimiterStatistics
from ._common import LimiterStatistics as LimiterStatistics
from ._common import LimiterUnavailable as LimiterUnavailable
from ._common import RateLimiterStatistics as RateLimiterStatistics
from ._common import WouldBlock as WouldBlock

_T = TypeVar("_T")
_R = TypeVar("_R")
_T1 = TypeVar("_T1")
_T2 = TypeVar("_T2")
_T3 = TypeVar("_T3")
_T4 = TypeVar("_T4")
_T5 = TypeVar("_T5")

implementation: Literal["c", "python"]
__version__: str

class _Holding:
    """What ``limiter.hold(n)`` returns: n tokens for an ``async with``."""
    async def __aenter__(self) -> None: ...
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

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
    async def acquire(self, n: int = 1) -> None: ...
    def acquire_nowait(self, n: int = 1) -> None: ...
    def release(self, n: int = 1) -> None: ...
    def hold(self, n: int = 1) -> _Holding: ...
    def pause(self, seconds: float) -> None: ...
    async def __aenter__(self) -> None: ...
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

class Window(NamedTuple):
    samples: int
    drops: int
    mean_latency: float
    min_latency: float
    in_flight: int

class Algorithm:
    long_latency: float | None
    def update(self, limit: float, window: Window) -> float: ...
    def reset(self) -> None: ...

class AIMD(Algorithm):
    increase: float
    backoff: float
    timeout: float
    def __init__(self, *, increase: float = 1.0, backoff: float = 0.9,
                 timeout: float = ...) -> None: ...

class Gradient2(Algorithm):
    tolerance: float
    smoothing: float
    long_window: int
    queue_size: float
    backoff: float
    drop_budget: float
    def __init__(self, *, tolerance: float = 1.05, smoothing: float = 0.2,
                 long_window: int = 600, queue_size: float = 4.0,
                 backoff: float = 0.9, drop_budget: float = 0.01) -> None: ...

class Probe(Algorithm):
    gain: float
    climb: float
    precision: float
    backoff: float
    drop_budget: float
    def __init__(self, *, gain: float = 0.05, climb: float = 1.5,
                 precision: float = 0.02, backoff: float = 0.9,
                 drop_budget: float = 0.01) -> None: ...

class AdaptiveLimiter(Limiter):
    """A Limiter whose total moves with its holders' latency and errors."""
    def __init__(
        self, initial: int, *, min_tokens: int = 1, max_tokens: int = 1000,
        algorithm: Algorithm | None = None,
        overload: type[BaseException] | tuple[type[BaseException], ...]
        | Callable[[BaseException], bool] = ...,
        on_change: Callable[[int, int], object] | None = None,
    ) -> None: ...
    @property
    def total_tokens(self) -> int: ...
    @total_tokens.setter
    def total_tokens(self, value: int) -> None: ...
    @property
    def algorithm(self) -> Algorithm: ...
    @property
    def min_tokens(self) -> int: ...
    @property
    def max_tokens(self) -> int: ...
    def mark_overload(self) -> None: ...
    def statistics(self) -> AdaptiveLimiterStatistics: ...  # type: ignore[override]

class KeyedLimiter:
    """One Limiter per key, made on first use, forgotten when idle."""
    def __init__(self, tokens_per_key: int | float) -> None: ...
    @property
    def tokens_per_key(self) -> int | float: ...
    def __getitem__(self, key: Hashable) -> Limiter: ...
    def __contains__(self, key: object) -> bool: ...
    def __iter__(self) -> Iterator[Hashable]: ...
    def __len__(self) -> int: ...
    def statistics(self) -> KeyedLimiterStatistics: ...

class RateLimiter:
    def __init__(self, rate: float, per: float = 1.0, burst: int = 1) -> None: ...
    @property
    def rate(self) -> float: ...
    @rate.setter
    def rate(self, value: float) -> None: ...
    @property
    def per(self) -> float: ...
    @property
    def burst(self) -> int: ...
    def statistics(self) -> RateLimiterStatistics: ...
    def locked(self) -> bool: ...
    async def acquire(self, n: int = 1) -> None: ...
    def acquire_nowait(self, n: int = 1) -> None: ...
    def release(self, n: int = 1) -> None: ...
    def hold(self, n: int = 1) -> _Holding: ...
    def pause(self, seconds: float) -> None: ...
    async def __aenter__(self) -> None: ...
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

class _ExternalSource:
    """The base of limiters kept outside the process (taskbound.redis)."""
    @property
    def name(self) -> str: ...
    async def acquire(self, n: int = 1) -> None: ...
    def acquire_nowait(self, n: int = 1) -> None: ...
    def release(self, n: int = 1) -> None: ...
    def hold(self, n: int = 1) -> _Holding: ...
    def pause(self, seconds: float) -> None: ...
    async def aclose(self) -> None: ...
    async def __aenter__(self) -> None: ...
    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None,
                        tb: TracebackType | None) -> None: ...

AnyLimiter = Limiter | RateLimiter | _ExternalSource

class BoundedTaskGroup:
    def __init__(
        self,
        limit: int | None = None,
        *,
        limiter: AnyLimiter | Sequence[AnyLimiter] | None = None,
    ) -> None: ...
    @property
    def limit(self) -> int | None: ...
    @property
    def limiters(self) -> tuple[AnyLimiter, ...]: ...
    def statistics(self) -> GroupStatistics: ...
    async def __aenter__(self) -> Self: ...
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None: ...
    if sys.version_info >= (3, 14):
        # Any other keyword goes to the loop's create_task (eager_start=...).
        async def spawn(
            self,
            coro: Awaitable[_T],
            /,
            *,
            limiter: AnyLimiter | Sequence[AnyLimiter] | None = None,
            cost: Mapping[AnyLimiter, int] | None = None,
            name: str | None = None,
            context: contextvars.Context | None = None,
            **kwargs: Any,
        ) -> asyncio.Task[_T]: ...
        def create_task(
            self,
            coro: Awaitable[_T],
            /,
            *,
            limiter: AnyLimiter | Sequence[AnyLimiter] | None = None,
            cost: Mapping[AnyLimiter, int] | None = None,
            name: str | None = None,
            context: contextvars.Context | None = None,
            **kwargs: Any,
        ) -> asyncio.Task[_T]: ...
    else:
        async def spawn(
            self,
            coro: Awaitable[_T],
            /,
            *,
            limiter: AnyLimiter | Sequence[AnyLimiter] | None = None,
            cost: Mapping[AnyLimiter, int] | None = None,
            name: str | None = None,
            context: contextvars.Context | None = None,
        ) -> asyncio.Task[_T]: ...
        def create_task(
            self,
            coro: Awaitable[_T],
            /,
            *,
            limiter: AnyLimiter | Sequence[AnyLimiter] | None = None,
            cost: Mapping[AnyLimiter, int] | None = None,
            name: str | None = None,
            context: contextvars.Context | None = None,
        ) -> asyncio.Task[_T]: ...
    def cancel(self) -> None: ...

_Limiters = AnyLimiter | Sequence[AnyLimiter] | None
# What gather() and as_completed() ask of each awaitable for its own
# limiters and costs.
_ItemLimiter = Callable[[Awaitable[Any]], _Limiters] | None
_ItemCost = Callable[[Awaitable[Any]], Mapping[AnyLimiter, int]] | None

class StreamIterator(AsyncIterator[_T]):
    def __aiter__(self) -> Self: ...
    async def __anext__(self) -> _T: ...
    async def aclose(self) -> None: ...
    async def __aenter__(self) -> Self: ...
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

@overload
def amap(
    fn: Callable[[_T], Awaitable[_R]],
    items: Iterable[_T] | AsyncIterable[_T],
    *,
    limit: int | None = None,
    limiter: _Limiters = None,
    item_limiter: Callable[[_T], _Limiters] | None = None,
    item_cost: Callable[[_T], Mapping[AnyLimiter, int]] | None = None,
    ordered: bool = True,
    return_exceptions: Literal[False] = False,
) -> StreamIterator[_R]: ...
@overload
def amap(
    fn: Callable[[_T], Awaitable[_R]],
    items: Iterable[_T] | AsyncIterable[_T],
    *,
    limit: int | None = None,
    limiter: _Limiters = None,
    item_limiter: Callable[[_T], _Limiters] | None = None,
    item_cost: Callable[[_T], Mapping[AnyLimiter, int]] | None = None,
    ordered: bool = True,
    return_exceptions: bool,
) -> StreamIterator[_R | BaseException]: ...
def as_completed(
    aws: Iterable[Awaitable[_T]] | AsyncIterable[Awaitable[_T]],
    *,
    limit: int | None = None,
    limiter: _Limiters = None,
    item_limiter: _ItemLimiter = None,
    item_cost: _ItemCost = None,
) -> StreamIterator[asyncio.Future[_T]]: ...
@overload
async def gather(
    aw1: Awaitable[_T1], /, *, limit: int | None = None,
    limiter: _Limiters = None,
    item_limiter: _ItemLimiter = None, item_cost: _ItemCost = None,
    return_exceptions: Literal[False] = False,
) -> tuple[_T1]: ...
@overload
async def gather(
    aw1: Awaitable[_T1], aw2: Awaitable[_T2], /, *, limit: int | None = None,
    limiter: _Limiters = None,
    item_limiter: _ItemLimiter = None, item_cost: _ItemCost = None,
    return_exceptions: Literal[False] = False,
) -> tuple[_T1, _T2]: ...
@overload
async def gather(
    aw1: Awaitable[_T1], aw2: Awaitable[_T2], aw3: Awaitable[_T3], /, *,
    limit: int | None = None, limiter: _Limiters = None,
    item_limiter: _ItemLimiter = None, item_cost: _ItemCost = None,
    return_exceptions: Literal[False] = False,
) -> tuple[_T1, _T2, _T3]: ...
@overload
async def gather(
    aw1: Awaitable[_T1], aw2: Awaitable[_T2], aw3: Awaitable[_T3],
    aw4: Awaitable[_T4], /, *, limit: int | None = None,
    limiter: _Limiters = None,
    item_limiter: _ItemLimiter = None, item_cost: _ItemCost = None,
    return_exceptions: Literal[False] = False,
) -> tuple[_T1, _T2, _T3, _T4]: ...
@overload
async def gather(
    aw1: Awaitable[_T1], aw2: Awaitable[_T2], aw3: Awaitable[_T3],
    aw4: Awaitable[_T4], aw5: Awaitable[_T5], /, *,
    limit: int | None = None, limiter: _Limiters = None,
    item_limiter: _ItemLimiter = None, item_cost: _ItemCost = None,
    return_exceptions: Literal[False] = False,
) -> tuple[_T1, _T2, _T3, _T4, _T5]: ...
@overload
async def gather(
    *aws: Awaitable[_T], limit: int | None = None, limiter: _Limiters = None,
    item_limiter: _ItemLimiter = None, item_cost: _ItemCost = None,
    return_exceptions: Literal[False] = False,
) -> list[_T]: ...
@overload
async def gather(
    *aws: Awaitable[_T], limit: int | None = None, limiter: _Limiters = None,
    item_limiter: _ItemLimiter = None, item_cost: _ItemCost = None,
    return_exceptions: bool,
) -> list[_T | BaseException]: ...
