"""Limiters shared by many processes and hosts, kept in Redis.

``RedisLimiter(client, name, total_tokens, *, lease=30.0)`` lets at most
``total_tokens`` tasks hold a token at once across every process that uses
the same ``name`` on the same Redis; ``RedisRateLimiter(client, name, rate,
per=1.0, burst=1)`` spreads starts across all of them. Both take part in
``BoundedTaskGroup(limiter=...)``, ``acquire()``/``release()``/``async with``
and the streaming helpers exactly as ``Limiter`` and ``RateLimiter`` do.

How a RedisLimiter works: every token is a lease in a sorted set, held until
its holder gives it back or stops renewing it (a process that dies gives its
tokens back within ``lease`` seconds). Waiters take a ticket in one line
shared by all processes and are served in arrival order. Each process has
one background task per limiter that talks to Redis for all of its waiters
and holders in one server-side script per exchange; it waits for a
notification on a pub/sub channel (published when tokens come back), with a
timer as the fallback (for leases that lapse, and lost messages).

Needs redis-py and its asyncio client: ``pip install 'taskbound[redis]'``
(from a checkout: ``pip install '.[redis]'``).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import secrets
from typing import Any

try:
    import redis.asyncio as _aioredis
    from redis.exceptions import ConnectionError as _RedisConnectionError
    from redis.exceptions import NoScriptError as _NoScriptError
    from redis.exceptions import TimeoutError as _RedisTimeoutError
except ImportError as exc:  # pragma: no cover - depends on the install
    from ._common import install_hint
    raise ImportError("taskbound.redis needs redis-py: "
                      + install_hint("redis")) from exc

from . import _ExternalSource
from ._common import (
    LimiterStatistics,
    LimiterUnavailable,
    RateLimiterStatistics,
    RateParameters,
    WouldBlock,
    check_positive,
    check_weight,
)

__all__ = ["RedisLimiter", "RedisRateLimiter"]

# Errors that mean "Redis cannot be reached": they become LimiterUnavailable.
# redis-py loads a script the server does not know and calls it again; a
# NoScriptError that still comes out means the server forgot it in between,
# that is, it restarted: unavailable now, loaded again by the next call.
_UNREACHABLE = (_RedisConnectionError, _RedisTimeoutError, _NoScriptError,
                OSError, asyncio.TimeoutError)

# One exchange of a process with a RedisLimiter's state.
#
# KEYS: meta (hash: total, epoch, seq, grace, longest lease), holders (zset:
#       lease -> expiry,
#       ms of the server's clock), line (zset: ticket -> arrival number),
#       alive (zset: ticket -> expiry).
# ARGV: lease ms, total to create the state with, the epoch this process
#       last saw ('' if none), a fresh epoch, a new total ('' to keep), the
#       longest lease of any process this one has heard of, the prefix of
#       this limiter object's tickets, '1' if it has waiters, then n and n
#       leases given back, n and n tickets that left the line, n and n leases
#       to renew, n and n new tickets (in arrival order), and the rest:
#       tickets still waiting whose place in line is to be kept alive.
# Returns: epoch, total, holders, in line, ms until the next lapse (-1 if
#          none), the longest lease in use, then the tickets granted (now
#          lease ids).
_LIMITER_SCRIPT = """
local meta, holders, line, alive = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local lease = tonumber(ARGV[1])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local freed = false

local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
  epoch = ARGV[4]
  redis.call('HSET', meta, 'epoch', epoch, 'total', ARGV[2], 'seq', 0)
  if ARGV[3] ~= '' then
    -- The state was lost (a restart, a flush) while this process used it.
    -- Holders that are still running re-register with their next renewal;
    -- until the longest lease has passed nobody new is let in.
    redis.call('HSET', meta, 'grace', now + tonumber(ARGV[6]))
  end
end
local longest = tonumber(redis.call('HGET', meta, 'longest') or '0')
if lease > longest then
  longest = lease
  redis.call('HSET', meta, 'longest', longest)
end
if ARGV[5] ~= '' then
  redis.call('HSET', meta, 'total', ARGV[5])
  freed = true
end
local total = tonumber(redis.call('HGET', meta, 'total'))

if redis.call('ZREMRANGEBYSCORE', holders, '-inf', now) > 0 then
  freed = true
end
for _, ticket in ipairs(redis.call('ZRANGEBYSCORE', alive, '-inf', now)) do
  redis.call('ZREM', line, ticket)
  redis.call('ZREM', alive, ticket)
  freed = true
end

local i = 9
local n = tonumber(ARGV[i])
for j = i + 1, i + n do
  if redis.call('ZREM', holders, ARGV[j]) > 0 then freed = true end
end
i = i + n + 1
n = tonumber(ARGV[i])
for j = i + 1, i + n do
  if redis.call('ZREM', line, ARGV[j]) > 0 then freed = true end
  redis.call('ZREM', alive, ARGV[j])
end
i = i + n + 1
n = tonumber(ARGV[i])
for j = i + 1, i + n do
  redis.call('ZADD', holders, now + lease, ARGV[j])
end

i = i + n + 1
n = tonumber(ARGV[i])
for j = i + 1, i + n do
  redis.call('ZADD', line, redis.call('HINCRBY', meta, 'seq', 1), ARGV[j])
  redis.call('ZADD', alive, now + lease, ARGV[j])
end
for j = i + n + 1, #ARGV do
  if not redis.call('ZSCORE', line, ARGV[j]) then
    -- dropped as dead while this process stalled: back of the line
    redis.call('ZADD', line, redis.call('HINCRBY', meta, 'seq', 1), ARGV[j])
  end
  redis.call('ZADD', alive, now + lease, ARGV[j])
end

-- The first `free` tickets in line may go; this object takes its own.
local granted = {}
local grace = tonumber(redis.call('HGET', meta, 'grace') or '0')
local free = total - redis.call('ZCARD', holders)
if now >= grace and free > 0 and ARGV[8] == '1' then
  local prefix = ARGV[7]
  for _, ticket in ipairs(redis.call('ZRANGE', line, 0, free - 1)) do
    if string.sub(ticket, 1, #prefix) == prefix then
      redis.call('ZREM', line, ticket)
      redis.call('ZREM', alive, ticket)
      redis.call('ZADD', holders, now + lease, ticket)
      table.insert(granted, ticket)
    end
  end
end

local waiting = redis.call('ZCARD', line)
if freed and waiting > 0 and now >= grace
    and redis.call('ZCARD', holders) < total then
  redis.call('PUBLISH', KEYS[5], 'freed')
end

local next_lapse = -1
for _, key in ipairs({holders, alive}) do
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if first[2] then
    local wait = tonumber(first[2]) - now
    if next_lapse < 0 or wait < next_lapse then next_lapse = wait end
  end
end
if grace > now and (next_lapse < 0 or grace - now < next_lapse) then
  next_lapse = grace - now
end

local reply = {epoch, total, redis.call('ZCARD', holders), waiting,
               next_lapse, longest}
for _, ticket in ipairs(granted) do table.insert(reply, ticket) end
return reply
"""

# Statistics: KEYS as above; returns total (or -1 if no state), holders, in
# line, after dropping what has lapsed.
_LIMITER_STATISTICS_SCRIPT = """
local meta, holders, line, alive = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local total = redis.call('HGET', meta, 'total')
redis.call('ZREMRANGEBYSCORE', holders, '-inf', now)
for _, ticket in ipairs(redis.call('ZRANGEBYSCORE', alive, '-inf', now)) do
  redis.call('ZREM', line, ticket)
  redis.call('ZREM', alive, ticket)
end
return {total or -1, redis.call('ZCARD', holders), redis.call('ZCARD', line)}
"""

# GCRA with reservations: KEYS[1] holds the theoretical arrival time (ms of
# the server's clock) of the next start. ARGV: interval ms, burst, how many
# starts to reserve. Returns each start's delay from now, in ms, as strings
# (a script's numbers come back as truncated integers).
_RATE_SCRIPT = """
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local delays = {}
for j = 1, tonumber(ARGV[3]) do
  local allowed = tat - interval * (burst - 1)
  local delay = allowed - now
  if delay < 0 then delay = 0 end
  table.insert(delays, string.format('%.3f', delay))
  tat = tat + interval
end
redis.call('SET', KEYS[1], string.format('%.3f', tat), 'PX',
           math.ceil(tat - now + interval * burst) + 1000)
return delays
"""


def _check_client(client: object) -> Any:
    if not isinstance(client, _aioredis.Redis):
        raise TypeError("client must be a redis.asyncio.Redis, not "
                        f"{type(client).__name__}")
    return client


def _check_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, not {type(name).__name__}")
    if not name or len(name) > 200 or "{" in name or "}" in name \
            or not name.isprintable():
        raise ValueError("name must be 1 to 200 printable characters "
                         f"without braces, not {name!r}")
    return name


def _check_tokens(value: object) -> int:
    if isinstance(value, (bool, float)) or not isinstance(value, int):
        raise TypeError("total_tokens must be an int, not "
                        f"{type(value).__name__}")
    if value < 0:
        raise ValueError(f"total_tokens must be >= 0, not {value}")
    return value


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _unavailable(limiter: object, error: BaseException) -> LimiterUnavailable:
    failure = LimiterUnavailable(f"{limiter!r}: Redis could not be reached "
                                 f"({type(error).__name__}: {error})")
    failure.__cause__ = error
    return failure


class _Remote:
    """What both Redis limiters share: the client, the event loop they are
    bound to, the local line of waiter futures, and the background task that
    talks to Redis for them."""

    def __init__(self, client: object, name: object) -> None:
        super().__init__()
        self._client = _check_client(client)
        self._name = _check_name(name)
        self._prefix = f"taskbound:{{{self._name}}}:"   # one cluster slot
        self._line: dict = {}          # future -> ticket, in arrival order
        self._worker: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None
        self._closing = False

    @property
    def name(self) -> str:
        return self._name

    def acquire_nowait(self, n: int = 1) -> None:
        check_weight(self, n)
        raise WouldBlock(f"{self!r} needs a round trip to Redis for a "
                         "token: use await acquire()")

    # -- the protocol a claim uses --

    def _try_take(self, loop) -> bool:
        self._bind(loop)
        if self._wake is None:
            self._wake = asyncio.Event()
        return False

    def _enqueue(self, loop):
        future = loop.create_future()
        self._line[future] = self._new_ticket()
        self._kick()
        return future

    def _new_ticket(self) -> Any:
        return None

    def _kick(self) -> None:
        """Have the background task run an exchange soon."""
        self._wake.set()
        if self._worker is None and not self._loop.is_closed():
            # asyncio.Task, not loop.create_task: an eager task factory
            # would run the exchange inside the caller's claim. (On a
            # closed loop nothing can be sent: what is held lapses.)
            self._worker = asyncio.Task(self._work(), loop=self._loop,
                                        name=f"taskbound.redis {self._name}")

    async def _work(self) -> None:
        try:
            while self._busy():
                self._wake.clear()
                try:
                    timeout = await self._exchange()
                except Exception as error:
                    # Not a connection problem (those are handled inside):
                    # a server that refuses the script, say. The waiters
                    # fail with it rather than wait for ever.
                    self._fail_line(list(self._line), error)
                    timeout = 1.0
                if not self._busy() or self._closing and (
                        not self._pending_return() or self._failing()):
                    break
                if not self._wake.is_set():
                    try:
                        async with asyncio.timeout(
                                None if math.isinf(timeout) else timeout):
                            await self._wake.wait()
                    except TimeoutError:
                        pass
        finally:
            self._worker = None
            self._stopped()

    def _stopped(self) -> None:
        pass

    def _failing(self) -> bool:
        return False

    def _fail_line(self, futures, error: BaseException) -> None:
        for future in futures:
            self._dequeue(future)
            if not future.done():
                future.set_exception(error)

    async def aclose(self) -> None:
        """Send what is due (tokens given back) and stop the background
        task. Tasks still waiting fail with RuntimeError; tokens still held
        lapse after the lease. The limiter may be used again afterwards."""
        worker = self._worker
        if worker is None:
            return
        self._closing = True
        try:
            closed = RuntimeError(f"{self!r} was closed while this task "
                                  "waited")
            self._fail_line(list(self._line), closed)
            self._wake.set()
            # It stops after the exchange under way, or the next one if
            # something is still to be sent (unless Redis is unreachable:
            # then what it had to give back lapses by itself).
            await asyncio.shield(worker)
        finally:
            self._closing = False


class _RedisLimiter(_Remote):
    """RedisLimiter(client, name, total_tokens, *, lease=30.0)"""

    def __init__(self, client, name, total_tokens, *, lease=30.0) -> None:
        super().__init__(client, name)
        self._total = _check_tokens(total_tokens)
        self._lease = check_positive("lease", lease)
        if self._lease < 0.1:
            raise ValueError(f"lease must be at least 0.1 s, not {lease!r}")
        prefix = self._prefix
        self._keys = [prefix + "meta", prefix + "holders", prefix + "line",
                      prefix + "alive", prefix + "freed"]
        self._script = client.register_script(_LIMITER_SCRIPT)
        self._statistics_script = client.register_script(
            _LIMITER_STATISTICS_SCRIPT)
        self._id = secrets.token_hex(8)
        self._numbers = itertools.count()
        self._epoch = ""            # the state's epoch, once seen
        self._longest = self._lease  # the longest lease of any process
        self._held: list = []       # lease ids this object holds
        # (lease id, lapse time) to give back, and (ticket, lapse time) of
        # tickets that left the line: after the lapse time Redis has
        # dropped them by itself.
        self._returns: list = []
        self._left: list = []
        self._waiter_of: dict = {}  # ticket -> future, for those in _line
        self._unsent: dict = {}     # tickets not yet in Redis's line
        # When the leases held and the tickets waiting are next renewed.
        self._renew_at = math.inf
        self._retry = 0.0           # the back-off after a failed exchange
        # The longest a waiter goes without an exchange, notified or not.
        self._fallback = min(self._lease / 3, 5.0)
        self._listener: asyncio.Task | None = None

    def __repr__(self) -> str:
        return (f"<RedisLimiter {self._name!r} total_tokens={self._total} "
                f"held here={len(self._held)} waiting here={len(self._line)}>")

    @property
    def total_tokens(self) -> int:
        """The total as last read from Redis (or given, before that)."""
        return self._total

    @property
    def lease(self) -> float:
        return self._lease

    @property
    def held_tokens(self) -> int:
        """Tokens held through this object (this process's share)."""
        return len(self._held)

    async def set_total_tokens(self, total_tokens: int) -> None:
        """Store a new total in Redis, for every process: raising it lets
        waiters in; lowering it lets holders finish."""
        await self._call(str(_check_tokens(total_tokens)))

    async def statistics(self) -> LimiterStatistics:
        """LimiterStatistics(total, borrowed, waiting), read from Redis:
        for every process, not only this one."""
        try:
            total, borrowed, waiting = await self._statistics_script(
                keys=self._keys[:4])
        except _UNREACHABLE as error:
            raise _unavailable(self, error) from error
        total = int(total)
        return LimiterStatistics(self._total if total < 0 else total,
                                 int(borrowed), int(waiting))

    # -- the protocol a claim uses --

    def _new_ticket(self) -> str:
        ticket = f"{self._id}:{next(self._numbers)}"
        self._unsent[ticket] = None
        if self._renew_at == math.inf:
            self._renew_at = self._loop.time() + self._lease / 3
        return ticket

    def _enqueue(self, loop):
        future = super()._enqueue(loop)
        self._waiter_of[self._line[future]] = future
        return future

    def _dequeue(self, future) -> None:
        ticket = self._line.pop(future, None)
        if ticket is None:
            return
        del self._waiter_of[ticket]
        if self._unsent.pop(ticket, 0) is None:
            return                  # never reached Redis
        self._left.append((ticket, self._loop.time() + self._lease))
        self._kick()

    def _pass_on(self) -> None:
        self._give_back()

    def _give_back(self) -> None:
        if not self._held:
            raise RuntimeError(
                f"release() called on {self!r}, which holds no tokens")
        lease = self._held.pop()
        self._returns.append((lease, self._loop.time() + self._lease))
        if not self._held and not self._line:
            self._renew_at = math.inf
        self._kick()

    # -- the background task --

    def _busy(self) -> bool:
        return bool(self._line or self._held or self._returns or self._left)

    def _pending_return(self) -> bool:
        return bool(self._returns or self._left)

    def _failing(self) -> bool:
        return self._retry > 0

    async def _call(self, new_total, returns=(), left=(), renew=(), new=(),
                    refresh=(), grant=False):
        args = [int(self._lease * 1000), self._total, self._epoch,
                secrets.token_hex(8), new_total, int(self._longest * 1000),
                f"{self._id}:", "1" if grant else "0",
                len(returns), *returns, len(left), *left,
                len(renew), *renew, len(new), *new, *refresh]
        try:
            reply = await self._script(keys=self._keys, args=args)
        except _UNREACHABLE as error:
            raise _unavailable(self, error) from error
        self._epoch = _text(reply[0])
        self._total = int(reply[1])
        self._longest = max(self._longest, int(reply[5]) / 1000)
        return reply

    async def _exchange(self) -> float:
        """One script call for everything due; returns how long to wait for
        a notification before the next one."""
        loop = self._loop
        now = loop.time()
        returns = [item for item in self._returns if item[1] > now]
        left = [item for item in self._left if item[1] > now]
        self._returns, self._left = [], []
        due = now >= self._renew_at
        renew = list(self._held) if due else []
        refresh = [ticket for ticket in self._line.values()
                   if ticket not in self._unsent] if due else []
        new = list(self._unsent)
        self._unsent.clear()
        futures = list(self._line)
        try:
            reply = await self._call("", [lease for lease, _ in returns],
                                     [ticket for ticket, _ in left], renew,
                                     new, refresh, bool(self._line))
        except LimiterUnavailable as error:
            # The waiters fail, holding nothing; whatever Redis may have
            # granted them before the reply was lost is given back later.
            self._returns[:0] = returns
            self._left[:0] = left
            lapse = now + self._lease
            self._returns += [(self._line[future], lapse)
                              for future in futures if future in self._line]
            self._fail_line(futures, error)
            self._retry = min(max(self._retry * 2, 0.05), self._lease / 4)
            if due:
                self._renew_at = now + self._retry
            return self._retry
        self._retry = 0.0
        if due:
            self._renew_at = now + self._lease / 3
        for lease in reply[6:]:
            lease = _text(lease)
            future = self._waiter_of.pop(lease, None)
            if future is None or future.done():
                # It left the line while the script ran.
                if future is not None:
                    del self._line[future]
                self._returns.append((lease, now + self._lease))
                continue
            del self._line[future]
            self._held.append(lease)
            future.set_result(True)
        if not self._held and not self._line:
            self._renew_at = math.inf
        wait = self._renew_at - now
        if self._returns or self._left:
            wait = 0.0
        elif self._line:
            if self._listener is None:
                self._listener = asyncio.Task(
                    self._listen(), loop=loop,
                    name=f"taskbound.redis {self._name} notifications")
            next_lapse = int(reply[4]) / 1000
            fallback = self._fallback
            if next_lapse >= 0:
                fallback = min(fallback, next_lapse + 0.001)
            wait = min(wait, fallback)
        return max(wait, 0.0)

    async def _listen(self) -> None:
        """Wake the exchange whenever some process gives tokens back."""
        backoff = 0.05
        while True:
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(self._keys[4])
                # Whatever was freed before the subscription took effect
                # is seen by the exchange this starts.
                self._wake.set()
                backoff = 0.05
                while True:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True,
                        timeout=self._fallback)
                    if message is not None:
                        self._wake.set()
            except Exception:
                # Whatever it was, the exchange's timer covers for the
                # notifications; subscribe again after a pause.
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._lease / 4)
            finally:
                try:
                    await pubsub.aclose()
                except Exception:
                    pass

    def _stopped(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()


class _RedisRateLimiter(RateParameters, _Remote):
    """RedisRateLimiter(client, name, rate, per=1.0, burst=1)"""

    def __init__(self, client, name, rate, per=1.0, burst=1) -> None:
        super().__init__(client, name)
        self._set_rate_parameters(rate, per, burst)
        self._key = self._prefix + "tat"
        self._script = client.register_script(_RATE_SCRIPT)
        self._timers: dict = {}     # future -> its start's timer

    def __repr__(self) -> str:
        return (f"<RedisRateLimiter {self._name!r} rate={self._rate} "
                f"per={self._per} burst={self._burst} "
                f"waiting here={len(self._line) + len(self._timers)}>")

    def statistics(self) -> RateLimiterStatistics:
        """RateLimiterStatistics(rate, per, burst, waiting here)."""
        return self._statistics_with(len(self._line) + len(self._timers))

    def release(self, n: int = 1) -> None:
        """A rate limiter has nothing to give back."""
        check_weight(self, n)

    # -- the protocol a claim uses --

    def _new_ticket(self) -> bool:
        return True

    def _dequeue(self, future) -> None:
        # A start already reserved in Redis is not given back: the others
        # were spread around it, and a rate limiter errs on the slow side.
        self._line.pop(future, None)
        timer = self._timers.pop(future, None)
        if timer is not None:
            timer.cancel()

    def _pass_on(self) -> None:
        pass

    def _give_back(self) -> None:
        pass

    # -- the background task --

    def _busy(self) -> bool:
        return bool(self._line)

    def _pending_return(self) -> bool:
        return False

    async def _exchange(self) -> float:
        futures = list(self._line)
        interval = self._per / self._rate * 1000
        try:
            delays = await self._script(
                keys=[self._key],
                args=[repr(interval), self._burst, len(futures)])
        except _UNREACHABLE as error:
            self._fail_line(futures, _unavailable(self, error))
            return 0.0
        loop = self._loop
        for future, delay in zip(futures, delays):
            if self._line.pop(future, None) is None or future.done():
                continue
            delay = float(_text(delay)) / 1000
            if delay <= 0:
                future.set_result(True)
            else:
                self._timers[future] = loop.call_later(
                    delay, self._start, future)
        return 0.0

    def _start(self, future) -> None:
        self._timers.pop(future, None)
        if not future.done():
            future.set_result(True)


def _classes(base: type) -> tuple[type, type]:
    """RedisLimiter and RedisRateLimiter on one implementation's base."""

    class RedisLimiter(_RedisLimiter, base):
        __doc__ = _RedisLimiter.__doc__

    class RedisRateLimiter(_RedisRateLimiter, base):
        __doc__ = _RedisRateLimiter.__doc__

    RedisLimiter.__module__ = RedisRateLimiter.__module__ = __name__
    return RedisLimiter, RedisRateLimiter


RedisLimiter, RedisRateLimiter = _classes(_ExternalSource)
