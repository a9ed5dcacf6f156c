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
    check_pause,
    check_positive,
    check_weight,
    check_within_total,
)

__all__ = ["RedisLimiter", "RedisRateLimiter"]

# Errors that mean "Redis cannot be reached": they become LimiterUnavailable.
# redis-py loads a script the server does not know and calls it again; a
# NoScriptError that still comes out means the server forgot it in between,
# that is, it restarted: unavailable now, loaded again by the next call.
_UNREACHABLE = (_RedisConnectionError, _RedisTimeoutError, _NoScriptError,
                OSError, asyncio.TimeoutError)

# What both RedisLimiter scripts share. A ticket, and the lease it becomes,
# is named "<object id>:<number>:<tokens>": the tokens it wants or holds.
# meta's 'used' is the sum of the holders' tokens, kept as they come and go.
_LIMITER_PRELUDE = """
local meta, holders, line, alive = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

local function tokens_of(ticket)
  return tonumber(string.match(ticket, ':(%d+)$'))
end
local function hold(ticket, expiry)
  if redis.call('ZADD', holders, expiry, ticket) == 1 then
    redis.call('HINCRBY', meta, 'used', tokens_of(ticket))
  end
end
local function drop(ticket)
  if redis.call('ZREM', holders, ticket) == 0 then return false end
  redis.call('HINCRBY', meta, 'used', -tokens_of(ticket))
  return true
end
local function drop_lapsed()
  local lapsed = false
  for _, ticket in ipairs(redis.call('ZRANGEBYSCORE', holders, '-inf', now)) do
    drop(ticket)
    lapsed = true
  end
  for _, ticket in ipairs(redis.call('ZRANGEBYSCORE', alive, '-inf', now)) do
    redis.call('ZREM', line, ticket)
    redis.call('ZREM', alive, ticket)
    lapsed = true
  end
  return lapsed
end
local function used()
  return tonumber(redis.call('HGET', meta, 'used') or '0')
end
local function pause_left()
  local paused = tonumber(redis.call('HGET', meta, 'paused') or '0')
  if paused > now then return paused - now end
  return -1
end
"""

# One exchange of a process with a RedisLimiter's state.
#
# KEYS: meta (hash: total, used, epoch, seq, grace, longest lease, paused),
#       holders (zset: lease -> expiry, ms of the server's clock), line
#       (zset: ticket -> arrival number), alive (zset: ticket -> expiry), the
#       channel told when tokens come back or a pause begins.
# ARGV: lease ms, total to create the state with, the epoch this process
#       last saw ('' if none), a fresh epoch, a new total ('' to keep), the
#       longest lease of any process this one has heard of, the prefix of
#       this limiter object's tickets, '1' if it has waiters, a pause in ms
#       ('' if none), then n and n leases given back, n and n tickets that
#       left the line, n and n leases to renew, n and n new tickets (in
#       arrival order), and the rest: tickets still waiting whose place in
#       line is to be kept alive.
# Returns: epoch, total, tokens held, tickets in line, ms until the next
#          lapse (-1 if none), the longest lease in use, ms until the pause
#          ends (-1 if none), then the tickets granted (now lease ids).
_LIMITER_SCRIPT = _LIMITER_PRELUDE + """
local lease = tonumber(ARGV[1])
local changed = false

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
  changed = true
end
local total = tonumber(redis.call('HGET', meta, 'total'))
if ARGV[9] ~= '' then
  -- A pause extends the one under way, never shortens it; the others hear
  -- of it, so that each waits for its end.
  local paused = now + tonumber(ARGV[9])
  if paused > tonumber(redis.call('HGET', meta, 'paused') or '0') then
    redis.call('HSET', meta, 'paused', paused)
    changed = true
  end
end

if drop_lapsed() then changed = true end

local i = 10
local n = tonumber(ARGV[i])
for j = i + 1, i + n do
  if drop(ARGV[j]) then changed = true end
end
i = i + n + 1
n = tonumber(ARGV[i])
for j = i + 1, i + n do
  if redis.call('ZREM', line, ARGV[j]) > 0 then changed = true end
  redis.call('ZREM', alive, ARGV[j])
end
i = i + n + 1
n = tonumber(ARGV[i])
for j = i + 1, i + n do
  hold(ARGV[j], now + lease)
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

-- Tickets go in arrival order while they fit: the first that does not
-- holds back those behind it (no starvation of big requests). This object
-- takes its own; the others' are left to their objects, their tokens kept
-- for them.
local granted = {}
local grace = tonumber(redis.call('HGET', meta, 'grace') or '0')
local paused = pause_left()
local open = now >= grace and paused < 0
local free = total - used()
if open and free > 0 and ARGV[8] == '1' then
  local prefix = ARGV[7]
  for _, ticket in ipairs(redis.call('ZRANGE', line, 0,
                                     math.min(free, 1000) - 1)) do
    local tokens = tokens_of(ticket)
    if tokens > free then break end
    free = free - tokens
    if string.sub(ticket, 1, #prefix) == prefix then
      redis.call('ZREM', line, ticket)
      redis.call('ZREM', alive, ticket)
      hold(ticket, now + lease)
      table.insert(granted, ticket)
    end
  end
end

local waiting = redis.call('ZCARD', line)
if changed and waiting > 0 and (paused >= 0 or open and used() < total) then
  redis.call('PUBLISH', KEYS[5], 'changed')
end

local next_lapse = -1
for _, key in ipairs({holders, alive}) do
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if first[2] then
    local wait = tonumber(first[2]) - now
    if next_lapse < 0 or wait < next_lapse then next_lapse = wait end
  end
end
for _, wait in ipairs({grace - now, paused}) do
  if wait > 0 and (next_lapse < 0 or wait < next_lapse) then
    next_lapse = wait
  end
end

local reply = {epoch, total, used(), waiting, next_lapse, longest, paused}
for _, ticket in ipairs(granted) do table.insert(reply, ticket) end
return reply
"""

# Statistics: KEYS as above; returns total (or -1 if no state), tokens
# held, tickets in line, ms until the pause ends (-1 if none), after
# dropping what has lapsed.
_LIMITER_STATISTICS_SCRIPT = _LIMITER_PRELUDE + """
local total = redis.call('HGET', meta, 'total')
drop_lapsed()
return {total or -1, used(), redis.call('ZCARD', line), pause_left()}
"""

# GCRA with reservations. KEYS: the theoretical arrival time (ms of the
# server's clock) of the next start; the pause (hash: until, and shifted:
# the ms by which every pause so far has pushed the starts reserved ahead;
# never expired, so that shifted only grows); the channel told of each
# shift. ARGV: interval ms, burst, a pause in ms ('' if none), then the
# units of each start to reserve. A pause pushes the schedule, and every
# start reserved before it and not yet made, back by the time it adds.
# Returns shifted, ms until the pause ends (-1 if none), then each start's
# delay from now, in ms, as strings (a script's numbers come back as
# truncated integers).
_RATE_SCRIPT = """
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local paused = tonumber(redis.call('HGET', KEYS[2], 'until') or '0')
local shifted = tonumber(redis.call('HGET', KEYS[2], 'shifted') or '0')
if ARGV[3] ~= '' and now + tonumber(ARGV[3]) > paused then
  local shift = now + tonumber(ARGV[3]) - math.max(paused, now)
  paused = now + tonumber(ARGV[3])
  shifted = shifted + shift
  if tat > now then tat = tat + shift end
  redis.call('HSET', KEYS[2], 'until', string.format('%.3f', paused),
             'shifted', string.format('%.3f', shifted))
  redis.call('PUBLISH', KEYS[3], string.format('%.3f', shifted))
end
if tat < now then tat = now end
local reply = {string.format('%.3f', shifted), -1}
if paused > now then reply[2] = string.format('%.3f', paused - now) end
for j = 4, #ARGV do
  local units = tonumber(ARGV[j])
  local start = math.max(tat - interval * (burst - units), paused, now)
  table.insert(reply, string.format('%.3f', start - now))
  tat = math.max(tat, start) + interval * units
end
redis.call('SET', KEYS[1], string.format('%.3f', tat), 'PX',
           math.ceil(tat - now + interval * burst) + 1000)
return reply
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
        # The end (loop time) of the longest pause() asked for here and not
        # yet sent to Redis, or None.
        self._pause_asked: float | None = None
        self._listener: asyncio.Task | None = None

    @property
    def name(self) -> str:
        return self._name

    def acquire_nowait(self, n: int = 1) -> None:
        check_weight(self, n)
        raise WouldBlock(f"{self!r} needs a round trip to Redis for a "
                         "token: use await acquire()")

    def pause(self, seconds: float) -> None:
        """Grant no token, in any process using this name, for ``seconds``
        from now (a server's push-back: a 429's Retry-After). Kept in Redis
        by the server's clock: it holds from the next exchange with Redis,
        which this starts. Holders keep theirs and waiters their places; a
        later pause extends it, an earlier one does not shorten it."""
        seconds = check_pause(seconds)
        loop = asyncio.get_running_loop()
        self._bind(loop)
        self._make_wake()
        until = loop.time() + seconds
        if self._pause_asked is None or until > self._pause_asked:
            self._pause_asked = until
        self._kick()

    def _pause_to_send(self, now: float) -> str:
        """The pause asked for, in ms from now, for the script ('' if
        none); it is sent once."""
        until, self._pause_asked = self._pause_asked, None
        if until is None:
            return ""
        return str(math.ceil(max(until - now, 0.0) * 1000))

    def _ask_again(self, until: float | None) -> None:
        """A pause that could not be sent goes with the next exchange (none
        once the limiter is closing: Redis cannot be reached)."""
        if until is None or self._closing:
            return
        if self._pause_asked is None or until > self._pause_asked:
            self._pause_asked = until

    # -- the protocol a claim uses --

    def _make_wake(self) -> None:
        if self._wake is None:
            self._wake = asyncio.Event()

    def _try_take(self, loop, n: int = 1) -> bool:
        self._bind(loop)
        self._make_wake()
        return False

    def _enqueue(self, loop, n: int = 1):
        future = loop.create_future()
        self._line[future] = self._new_ticket(n)
        self._kick()
        return future

    def _new_ticket(self, n: int) -> Any:
        return n

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

    def _start_listener(self, channel: str) -> None:
        if self._listener is None:
            self._listener = asyncio.Task(
                self._listen(channel), loop=self._loop,
                name=f"taskbound.redis {self._name} notifications")

    def _stop_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()

    async def _listen(self, channel: str) -> None:
        """Hear what other processes publish on ``channel`` for as long as
        this runs, subscribing again whenever the connection breaks."""
        backoff = 0.05
        while True:
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(channel)
                # What was published before the subscription took effect is
                # caught up with here.
                await self._subscribed()
                backoff = 0.05
                while True:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True,
                        timeout=self._fallback)
                    if message is not None:
                        self._heard(_text(message["data"]))
            except Exception:
                # Whatever it was, the exchanges' timers cover for the
                # notifications; subscribe again after a pause.
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._fallback)
            finally:
                try:
                    await pubsub.aclose()
                except Exception:
                    pass

    async def _subscribed(self) -> None:
        """The subscription took effect."""

    def _heard(self, data: str) -> None:
        """Another process published ``data``."""

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
        if worker is not None:
            self._closing = True
            try:
                closed = RuntimeError(f"{self!r} was closed while this task "
                                      "waited")
                self._fail_line(list(self._line), closed)
                self._wake.set()
                # It stops after the exchange under way, or the next one if
                # something is still to be sent (unless Redis is
                # unreachable: then what it had to give back lapses by
                # itself).
                await asyncio.shield(worker)
            finally:
                self._closing = False
        # The subscription ends before the caller closes the client it
        # uses (ended afterwards, it could not finish).
        listener = self._listener
        self._stop_listener()
        if listener is not None:
            await asyncio.gather(listener, return_exceptions=True)


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
        self._held_tokens = 0       # and the tokens they hold
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
        return self._held_tokens

    async def set_total_tokens(self, total_tokens: int) -> None:
        """Store a new total in Redis, for every process: raising it lets
        waiters in; lowering it lets holders finish."""
        await self._call(str(_check_tokens(total_tokens)))

    async def statistics(self) -> LimiterStatistics:
        """LimiterStatistics(total, borrowed, waiting, paused_until), read
        from Redis: for every process, not only this one (waiting counts
        waiters, borrowed tokens; paused_until is in this loop's time)."""
        try:
            total, borrowed, waiting, pause_left = \
                await self._statistics_script(keys=self._keys[:4])
        except _UNREACHABLE as error:
            raise _unavailable(self, error) from error
        total, pause_left = int(total), int(pause_left)
        paused_until = None
        if pause_left >= 0:
            paused_until = asyncio.get_running_loop().time() + pause_left / 1000
        return LimiterStatistics(self._total if total < 0 else total,
                                 int(borrowed), int(waiting), paused_until)

    # -- the protocol a claim uses --

    def _check_weight(self, n: int) -> None:
        # Against the total last read from Redis.
        check_within_total(self, n, self._total)

    def _new_ticket(self, n: int) -> str:
        ticket = f"{self._id}:{next(self._numbers)}:{n}"
        self._unsent[ticket] = None
        if self._renew_at == math.inf:
            self._renew_at = self._loop.time() + self._lease / 3
        return ticket

    def _enqueue(self, loop, n: int = 1):
        future = super()._enqueue(loop, n)
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

    def _pass_on(self, n: int = 1) -> None:
        self._give_back(n)

    def _give_back(self, n: int = 1) -> None:
        # Newest first, by place: the newest lease is the usual one, and
        # found at the end of the list it goes without a scan.
        for i in self._places_making(n):
            lease = self._held.pop(i)
            self._returns.append((lease, self._loop.time() + self._lease))
        self._held_tokens -= n
        if not self._held and not self._line:
            self._renew_at = math.inf
        self._kick()

    def _places_making(self, n: int) -> list:
        """The places in _held, highest first, of the leases that give back
        n tokens: the newest of exactly n, else the newest whose tokens add
        up to n. A lease is given back whole (Redis cannot split one), so
        anything else is refused with nothing given back."""
        newest_first = range(len(self._held) - 1, -1, -1)
        for i in newest_first:
            if _tokens_of(self._held[i]) == n:
                return [i]
        places, left = [], n
        for i in newest_first:
            if _tokens_of(self._held[i]) <= left:
                places.append(i)
                left -= _tokens_of(self._held[i])
        if left == 0:
            return places
        if not self._held:
            raise RuntimeError(
                f"release() called on {self!r}, which holds no tokens")
        raise RuntimeError(
            f"release({n}) called on {self!r}, which holds "
            f"{self._held_tokens} token(s) in acquisitions of "
            f"{', '.join(str(_tokens_of(lease)) for lease in self._held)}: "
            "a Redis lease is given back whole")

    # -- the background task --

    def _busy(self) -> bool:
        return bool(self._line or self._held or self._returns or self._left
                    or self._pause_asked is not None)

    def _pending_return(self) -> bool:
        return bool(self._returns or self._left
                    or self._pause_asked is not None)

    def _failing(self) -> bool:
        return self._retry > 0

    async def _call(self, new_total, returns=(), left=(), renew=(), new=(),
                    refresh=(), grant=False, pause=""):
        args = [int(self._lease * 1000), self._total, self._epoch,
                secrets.token_hex(8), new_total, int(self._longest * 1000),
                f"{self._id}:", "1" if grant else "0", pause,
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
        pause_until = self._pause_asked
        pause = self._pause_to_send(now)
        try:
            reply = await self._call("", [lease for lease, _ in returns],
                                     [ticket for ticket, _ in left], renew,
                                     new, refresh, bool(self._line), pause)
        except LimiterUnavailable as error:
            # The waiters fail, holding nothing; whatever Redis may have
            # granted them before the reply was lost is given back later.
            # The pause is sent with the next exchange.
            self._returns[:0] = returns
            self._left[:0] = left
            self._ask_again(pause_until)
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
        for lease in reply[7:]:
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
            self._held_tokens += _tokens_of(lease)
            future.set_result(True)
        if not self._held and not self._line:
            self._renew_at = math.inf
        wait = self._renew_at - now
        if self._returns or self._left:
            wait = 0.0
        elif self._line:
            self._start_listener(self._keys[4])
            next_lapse = int(reply[4]) / 1000
            fallback = self._fallback
            if next_lapse >= 0:
                fallback = min(fallback, next_lapse + 0.001)
            wait = min(wait, fallback)
        return max(wait, 0.0)

    async def _subscribed(self) -> None:
        # Whatever was freed before the subscription took effect is seen
        # by the exchange this starts.
        self._wake.set()

    def _heard(self, data: str) -> None:
        # Tokens came back, or a pause began: the next exchange sees it.
        self._wake.set()

    def _stopped(self) -> None:
        self._stop_listener()


def _tokens_of(lease: str) -> int:
    """The tokens a ticket or lease wants or holds (its name ends in it)."""
    return int(lease.rpartition(":")[2])


class _RedisRateLimiter(RateParameters, _Remote):
    """RedisRateLimiter(client, name, rate, per=1.0, burst=1)"""

    def __init__(self, client, name, rate, per=1.0, burst=1) -> None:
        super().__init__(client, name)
        self._set_rate_parameters(rate, per, burst)
        self._keys = [self._prefix + "tat", self._prefix + "pause",
                      self._prefix + "shifts"]
        self._script = client.register_script(_RATE_SCRIPT)
        # future -> [its start's timer, the shifted it was reserved at]
        self._timers: dict = {}
        self._shifted = 0.0         # the largest shifted heard of, in ms
        self._paused_until = -math.inf  # as last heard, in loop time
        self._fallback = 1.0        # how long the listener waits at a time
        self._idle_timer = None     # stops the listener after idling 1 s

    def __repr__(self) -> str:
        return (f"<RedisRateLimiter {self._name!r} rate={self._rate} "
                f"per={self._per} burst={self._burst} "
                f"waiting here={len(self._line) + len(self._timers)}>")

    def statistics(self) -> RateLimiterStatistics:
        """RateLimiterStatistics(rate, per, burst, waiting here,
        paused_until as last heard from Redis)."""
        paused_until = None
        if self._loop is not None and self._loop.time() < self._paused_until:
            paused_until = self._paused_until
        return self._statistics_with(len(self._line) + len(self._timers),
                                     paused_until)

    def release(self, n: int = 1) -> None:
        """A rate limiter has nothing to give back."""
        check_weight(self, n)

    # -- the protocol a claim uses --

    def _dequeue(self, future) -> None:
        # A start already reserved in Redis is not given back: the others
        # were spread around it, and a rate limiter errs on the slow side.
        self._line.pop(future, None)
        timer = self._timers.pop(future, None)
        if timer is not None:
            timer[0].cancel()
        self._stop_listener_if_idle()

    def _pass_on(self, n: int = 1) -> None:
        pass

    def _give_back(self, n: int = 1) -> None:
        pass

    # -- the background task --

    def _busy(self) -> bool:
        return bool(self._line) or self._pause_asked is not None

    def _pending_return(self) -> bool:
        return self._pause_asked is not None

    async def _exchange(self) -> float:
        futures = list(self._line)
        loop = self._loop
        now = loop.time()
        pause_until = self._pause_asked
        interval = self._per / self._rate * 1000
        try:
            reply = await self._script(
                keys=self._keys,
                args=[repr(interval), self._burst, self._pause_to_send(now),
                      *[self._line[future] for future in futures]])
        except _UNREACHABLE as error:
            self._ask_again(pause_until)
            self._fail_line(futures, _unavailable(self, error))
            return 0.05 if self._pause_asked is not None else 0.0
        shifted = float(_text(reply[0]))
        pause_left = float(_text(reply[1]))
        if pause_left >= 0:
            self._paused_until = max(self._paused_until,
                                     now + pause_left / 1000)
        self._shift(shifted)
        for future, delay in zip(futures, reply[2:]):
            if self._line.pop(future, None) is None or future.done():
                continue
            delay = float(_text(delay)) / 1000
            if delay <= 0:
                future.set_result(True)
            else:
                self._timers[future] = [
                    loop.call_at(now + delay, self._start, future), shifted]
        if self._timers:
            # A pause another process asks for must reach the starts
            # reserved here.
            self._start_listener(self._keys[2])
            if self._idle_timer is not None:
                self._idle_timer.cancel()
                self._idle_timer = None
        return 0.0

    def _shift(self, shifted: float) -> None:
        """Every pause up to ``shifted`` (ms, in all) pushes the starts
        reserved before it back by what it added."""
        self._shifted = max(self._shifted, shifted)
        loop = self._loop
        for future, timer in self._timers.items():
            if timer[1] < self._shifted:
                when = timer[0].when() + (self._shifted - timer[1]) / 1000
                timer[0].cancel()
                timer[:] = [loop.call_at(when, self._start, future),
                            self._shifted]

    async def _subscribed(self) -> None:
        # A pause may have come while this was not yet listening.
        shifted = await self._client.hget(self._keys[1], "shifted")
        if shifted is not None:
            self._shift(float(_text(shifted)))

    def _heard(self, data: str) -> None:
        self._shift(float(data))

    def _start(self, future) -> None:
        self._timers.pop(future, None)
        if not future.done():
            future.set_result(True)
        self._stop_listener_if_idle()

    def _stop_listener_if_idle(self) -> None:
        # After a second without reserved starts, rather than at once:
        # a steady stream of starts keeps one subscription.
        if self._timers or self._listener is None or self._idle_timer:
            return
        self._idle_timer = self._loop.call_later(1.0, self._idle_stop)

    def _idle_stop(self) -> None:
        self._idle_timer = None
        if not self._timers:
            self._stop_listener()


def _classes(base: type) -> tuple[type, type]:
    """RedisLimiter and RedisRateLimiter on one implementation's base."""

    class RedisLimiter(_RedisLimiter, base):
        __doc__ = _RedisLimiter.__doc__

    class RedisRateLimiter(_RedisRateLimiter, base):
        __doc__ = _RedisRateLimiter.__doc__

    RedisLimiter.__module__ = RedisRateLimiter.__module__ = __name__
    return RedisLimiter, RedisRateLimiter


RedisLimiter, RedisRateLimiter = _classes(_ExternalSource)
