"""taskbound: a bounded asyncio TaskGroup, with limiters shared across groups.

The C core (``taskbound._taskbound``) is used unless the environment sets
``TASKBOUND_PURE_PYTHON=1``, which selects the pure-Python reference
(``taskbound._pycore``). ``taskbound.implementation`` says which one is active.
"""

import os as _os

from ._common import (
    DeadlockError,
    GroupStatistics,
    LimiterStatistics,
    LimiterUnavailable,
    RateLimiterStatistics,
    WouldBlock,
)

from ._stream import Helpers as _Helpers

if _os.environ.get("TASKBOUND_PURE_PYTHON", "") not in ("", "0"):
    from ._pycore import BoundedTaskGroup, Limiter, RateLimiter
    from ._pycore import ExternalSource as _ExternalSource
    from ._stream import StreamIterator as _StreamIterator
    from ._stream import _Stream
    implementation = "python"
else:
    from ._taskbound import BoundedTaskGroup, Limiter, RateLimiter
    from ._taskbound import ExternalSource as _ExternalSource
    from ._taskbound import Stream as _Stream
    from ._taskbound import StreamIterator as _StreamIterator
    implementation = "c"

_helpers = _Helpers((Limiter, RateLimiter, _ExternalSource),
                    _Stream, _StreamIterator)
gather = _helpers.gather
as_completed = _helpers.as_completed
amap = _helpers.amap

__version__ = "0.1.0"

__all__ = [
    "BoundedTaskGroup",
    "DeadlockError",
    "GroupStatistics",
    "Limiter",
    "LimiterStatistics",
    "LimiterUnavailable",
    "RateLimiter",
    "RateLimiterStatistics",
    "WouldBlock",
    "amap",
    "as_completed",
    "gather",
    "implementation",
]
