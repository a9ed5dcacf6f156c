"""taskbound: a bounded asyncio TaskGroup, with limiters shared across groups.

The C core (``taskbound._taskbound``) is used unless the environment sets
``TASKBOUND_PURE_PYTHON=1``, which selects the pure-Python reference
(``taskbound._pycore``). ``taskbound.implementation`` says which one is active.
"""

import os as _os

from ._adaptive import AIMD, Algorithm, Gradient2, Probe, Window
from ._adaptive import adaptive_type as _adaptive_type
from ._common import (
    AdaptiveLimiterStatistics,
    DeadlockError,
    GroupStatistics,
    KeyedLimiterStatistics,
    LimiterStatistics,
    LimiterUnavailable,
    RateLimiterStatistics,
    WouldBlock,
)

from ._helpers import Helpers as _Helpers
from ._keyed import keyed_type as _keyed_type

if _os.environ.get("TASKBOUND_PURE_PYTHON", "") not in ("", "0"):
    from . import _pycore as _core
    implementation = "python"
else:
    from . import _taskbound as _core
    implementation = "c"
BoundedTaskGroup = _core.BoundedTaskGroup
Limiter = _core.Limiter
RateLimiter = _core.RateLimiter
_ExternalSource = _core.ExternalSource   # (the base of taskbound.redis)

KeyedLimiter = _keyed_type(Limiter)
AdaptiveLimiter = _adaptive_type(Limiter)

_helpers = _Helpers.of(_core)
gather = _helpers.gather
as_completed = _helpers.as_completed
amap = _helpers.amap

__version__ = "0.2.0.dev0"

# What users meet in tracebacks and reprs is named where they import it
# from (the C core's public types are named so in C).
for _public in (AIMD, AdaptiveLimiterStatistics, Algorithm, Gradient2,
                Probe, Window, DeadlockError, GroupStatistics, KeyedLimiterStatistics,
                LimiterStatistics, LimiterUnavailable, RateLimiterStatistics,
                WouldBlock):
    _public.__module__ = __name__
if implementation == "python":
    for _public in (BoundedTaskGroup, Limiter, RateLimiter):
        _public.__module__ = __name__
del _public

__all__ = [
    "AIMD",
    "AdaptiveLimiter",
    "AdaptiveLimiterStatistics",
    "Algorithm",
    "BoundedTaskGroup",
    "DeadlockError",
    "Gradient2",
    "GroupStatistics",
    "KeyedLimiter",
    "KeyedLimiterStatistics",
    "Limiter",
    "LimiterStatistics",
    "LimiterUnavailable",
    "Probe",
    "RateLimiter",
    "RateLimiterStatistics",
    "Window",
    "WouldBlock",
    "amap",
    "as_completed",
    "gather",
    "implementation",
]
