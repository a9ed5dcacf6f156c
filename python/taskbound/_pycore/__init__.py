"""The pure-Python reference implementation of taskbound.

It is the readable statement of the semantics and the oracle the C core is
tested against; ``TASKBOUND_PURE_PYTHON=1`` makes ``import taskbound`` use it.
Its layers and names follow the C core's (src/core, src/group, src/stream)
on purpose: a claim of tokens, a child coroutine that returns them in its
task's last step, workers that run items inline, so that both schedule the
same work in the same loop iterations.

    core.py    token sources (Limiter, RateLimiter, ExternalSource), Claim
    group.py   BoundedTaskGroup, its children and spawn()
    stream.py  the engine of gather, as_completed and amap

Like the C module (src/module.c), this package only assembles them.
"""

from .core import ExternalSource, Limiter, RateLimiter
from .group import BoundedTaskGroup
from .stream import Stream, StreamIterator

__all__ = [
    "BoundedTaskGroup",
    "ExternalSource",
    "Limiter",
    "RateLimiter",
    "Stream",
    "StreamIterator",
]
