"""gather, as_completed and amap: the public helpers, on either
implementation's stream engine (Stream and StreamIterator of the C core or
of the reference; see src/stream/ and taskbound._pycore.stream)."""

from __future__ import annotations

import types

from ._common import (
    check_awaitable,
    check_iterable,
    check_limit,
    close_coroutine,
)


class Helpers:
    """gather, as_completed and amap on one implementation's stream engine
    (which takes that implementation's limiters)."""

    def __init__(self, stream_type, iterator_type) -> None:
        self._stream_type = stream_type
        self._iterator_type = iterator_type

    @classmethod
    def of(cls, module) -> Helpers:
        """The helpers of taskbound._taskbound or of taskbound._pycore."""
        return cls(module.Stream, module.StreamIterator)

    def _stream(self, source, make, limit, limiter, item_limiter, item_cost,
                **options):
        if limit is not None:
            limit = check_limit(limit)
        for name, value in (("item_limiter", item_limiter),
                            ("item_cost", item_cost)):
            if value is not None and not callable(value):
                raise TypeError(f"{name} must be a callable taking an item, "
                                f"not {type(value).__name__}")
        return self._stream_type(source, make, limit=limit, limiter=limiter,
                                 item_limiter=item_limiter,
                                 item_cost=item_cost, **options)

    async def gather(self, *aws, limit=None, limiter=None,
                     item_limiter=None, item_cost=None,
                     return_exceptions=False):
        """Like asyncio.gather, running at most ``limit`` at once."""
        try:
            for item in aws:
                if type(item) is not types.CoroutineType:  # the common case
                    check_awaitable(item)
            stream = self._stream(aws, None, limit, limiter, item_limiter,
                                  item_cost, name="gather",
                                  ordered=True,
                                  return_exceptions=return_exceptions,
                                  as_futures=False, strict_input=True)
        except BaseException:
            for item in aws:
                close_coroutine(item)
            raise
        return await stream.collect()

    def as_completed(self, aws, *, limit=None, limiter=None,
                     item_limiter=None, item_cost=None):
        """Done futures in completion order: each given Task or Future
        itself, and for each coroutine a done future with its outcome."""
        check_iterable(aws)
        stream = self._stream(aws, None, limit, limiter, item_limiter,
                              item_cost, name="as_completed", ordered=False,
                              return_exceptions=True, as_futures=True,
                              strict_input=True)
        return self._iterator_type(stream)

    def amap(self, fn, items, *, limit=None, limiter=None,
             item_limiter=None, item_cost=None, ordered=True,
             return_exceptions=False):
        """``await fn(item)`` for each item, in input order (``ordered``) or
        in completion order."""
        if not callable(fn):
            raise TypeError(f"fn must be callable, not {fn!r}")
        check_iterable(items)
        stream = self._stream(items, fn, limit, limiter, item_limiter,
                              item_cost, name="amap",
                              ordered=ordered,
                              return_exceptions=return_exceptions,
                              as_futures=False, strict_input=False)
        return self._iterator_type(stream)
