"""A global send-rate limiter shared by every worker process on every machine.

Amazon SES enforces one *account-wide* maximum sending rate (recipients per
second). Celery's own ``rate_limit`` task option cannot enforce it: it is a
token bucket kept in memory by each worker process (per task type, per
consumer), so N processes on M machines would together send N*M times the
configured rate, and the limit changes every time the pool is scaled.

This module keeps the single bucket in Redis instead and updates it with one
atomic Lua script implementing GCRA (the generic cell rate algorithm):

* emission interval ``T = 1 / per_second``; the key stores the *theoretical
  arrival time* ``tat`` (float seconds on the Redis server clock);
* a request for ``n`` tokens at ``now`` computes
  ``new_tat = max(tat, now) + n*T`` and is granted iff
  ``new_tat - now <= max(burst, n) * T``; on grant the key is set to
  ``new_tat`` (expiring once the bucket would be full again anyway), on
  refusal nothing is written and ``new_tat - now - max(burst, n)*T`` is the
  wait after which the same request would be granted.

``now`` comes from ``redis.call('TIME')`` inside the script, so the clocks of
the worker machines never matter. Starting from a full bucket, the tokens
granted over any window ``W`` are at most ``burst + per_second * W`` (plus
float rounding). ``max(burst, n)`` lets a request bigger than the burst (one
message to 50 recipients with burst 1) through when the bucket is full, rather
than refusing it forever; the bucket then runs ``n - burst`` tokens into debt,
so the long-run rate still holds, though such a request can momentarily exceed
``burst``.

SES counts recipients, so callers pass ``tokens=<number of recipients>``.
No jitter is added here: spreading out retries is the caller's business.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.conf import settings

from core.metrics import rate_limit_wait_observe
from core.redisclient import redis_client

if TYPE_CHECKING:
    import redis
    from redis.commands.core import Script

DEFAULT_KEY = "emailsvc:ratelimit:send"

# KEYS[1] bucket key; ARGV[1] emission interval T (seconds per token),
# ARGV[2] burst (tokens), ARGV[3] tokens requested, ARGV[4] the longest wait
# granted, ARGV[5] the idle start (see below).
# A request whose wait is at most ARGV[4] seconds is granted *now* for the
# moment its tokens come due (the caller sleeps the returned wait, then sends);
# a longer wait takes nothing. With ARGV[4] = 0 this is plain GCRA: granted
# only when the tokens are there, else the wait after which they would be.
# An idle bucket books its first moment ARGV[5] seconds ahead (0: at once).
# Grants follow one sequence of theoretical arrival times whatever the
# callers' waits, so the same bound holds, without waiters polling Redis.
# Returns "G<wait>" (granted; send after <wait> seconds) or "R<wait>" (refused),
# a string: Redis converts a Lua number reply to an integer, which would
# truncate 0.07 to 0.
_GCRA_LUA = """
if redis.replicate_commands then
  -- Redis < 5: TIME is non-deterministic, so replicate the effects (SET), not the script.
  pcall(redis.replicate_commands)
end
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tokens = tonumber(ARGV[3])
local max_wait = tonumber(ARGV[4])
local idle_start = tonumber(ARGV[5]) or 0
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tat = tonumber(redis.call('GET', KEYS[1]))
-- Work with offsets from now: subtracting two ~1.7e9 doubles is exact enough,
-- and a full bucket gives an offset of exactly 0.
local ahead = 0
if tat and tat > now then
  ahead = tat - now
end
local wait = ahead + tokens * interval - math.max(burst, tokens) * interval
if ahead == 0 and idle_start > 0 then
  -- As if the request came idle_start from now, to a bucket idle until then.
  wait = idle_start
  ahead = idle_start
end
local offset = ahead + tokens * interval
-- 1 microsecond of slack absorbs float rounding (the server clock has
-- microsecond resolution anyway); it does not accumulate, as tat keeps the sum.
if wait <= 0.000001 then
  wait = 0
end
if wait > max_wait then
  -- Rounded up to the microsecond so that sleeping the returned wait is enough.
  return 'R' .. string.format('%.6f', math.ceil(wait * 1000000) / 1000000)
end
redis.call('SET', KEYS[1], string.format('%.17g', now + offset), 'PX', math.ceil(offset * 1000) + 1000)
return 'G' .. string.format('%.6f', math.ceil(wait * 1000000) / 1000000)
"""

# How far ahead of the server clock the bucket is booked, in seconds (0: idle).
_BACKLOG_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat and tat > now then
  return string.format('%.6f', tat - now)
end
return '0'
"""

_scripts: dict[str, Script] = {}


@dataclass(frozen=True)
class RateLimit:
    """One global token bucket.

    per_second: tokens (SES recipients) added per second; ``<= 0`` turns the
        limiter off (every request is granted without touching Redis).
    burst: bucket capacity in tokens, ``>= 1``: how many tokens may be taken at
        once after an idle period.
    key: the Redis key holding the bucket's state; every process that shares
        the limit must use the same key.
    """

    per_second: float
    burst: int
    key: str = DEFAULT_KEY

    def __post_init__(self) -> None:
        if math.isnan(self.per_second) or math.isinf(self.per_second):
            raise ValueError(f"per_second must be a finite number, got {self.per_second!r}")
        if int(self.burst) != self.burst or self.burst < 1:
            raise ValueError(f"burst must be an integer >= 1, got {self.burst!r}")
        if not self.key:
            raise ValueError("key must not be empty")

    @property
    def enabled(self) -> bool:
        return self.per_second > 0


def rate_limit_try(*, limit: RateLimit, tokens: int = 1, client: redis.Redis | None = None) -> float:
    """Take `tokens` now if the bucket allows it: return 0.0. Otherwise take nothing and
    return how many seconds to wait before the same request would be granted.

    One atomic round trip to Redis (none when the limit is off). The returned
    wait is exact at the time of the call (rounded up to the microsecond); other
    processes may take the tokens first, so a retry after waiting can be
    refused again with a new wait. A request for more than `limit.burst`
    tokens is granted only when the bucket is full.

    client: the Redis client to use; by default the process-wide
        `core.redisclient.redis_client()` (settings.REDIS_URL).
    Raises ValueError if tokens < 1, and redis-py's errors if Redis fails.
    """
    if int(tokens) != tokens or tokens < 1:
        raise ValueError(f"tokens must be an integer >= 1, got {tokens!r}")
    if not limit.enabled:
        return 0.0
    granted, wait = _reserve(limit=limit, tokens=tokens, max_wait=0.0, idle_start=0.0, client=client)
    return 0.0 if granted else wait


def rate_limit_acquire(
    *, limit: RateLimit, tokens: int = 1, max_wait: float, client: redis.Redis | None = None
) -> float:
    """Block (time.sleep, re-trying) until `tokens` are granted, as long as the next wait would not
    push the total waited beyond max_wait. Returns 0.0 when granted (after sleeping as needed), else
    the remaining wait in seconds (nothing taken) so the caller can reschedule instead of holding
    a worker slot.

    The total waited is measured with time.monotonic() from the call. With
    max_wait=0 this is rate_limit_try. Waiters are not queued: under contention
    a waiter may be refused again after sleeping and then sleeps the new wait.
    Raises ValueError if max_wait is negative or NaN (and as rate_limit_try).
    """
    if not max_wait >= 0:
        raise ValueError(f"max_wait must be >= 0, got {max_wait!r}")
    started = time.monotonic()
    while True:
        wait = rate_limit_try(limit=limit, tokens=tokens, client=client)
        if wait <= 0:
            return 0.0
        if time.monotonic() - started + wait > max_wait:
            return wait
        time.sleep(wait)


def _registered(client: redis.Redis, source: str) -> Script:
    """A script registered once per process (redis-py's Script retries with
    SCRIPT LOAD when the server answers NOSCRIPT, e.g. after a restart or
    SCRIPT FLUSH, and may be called with any client)."""
    if source not in _scripts:
        _scripts[source] = client.register_script(source)
    return _scripts[source]


def rate_limit_reserve(
    *, limit: RateLimit, tokens: int = 1, max_wait: float, idle_start: float = 0.0,
    client: redis.Redis | None = None,
) -> tuple[bool, float]:
    """Book `tokens` for the earliest moment the bucket allows, if that is at
    most `max_wait` seconds away: (True, wait) — the caller sleeps `wait`, then
    uses them. Otherwise nothing is booked: (False, wait until it would be).
    `idle_start`: when the bucket is idle, book as if the request came this
    many seconds from now (the moment is then, not now).

    One atomic round trip (none when the limit is off). Unlike
    rate_limit_acquire, concurrent callers are served in the order they booked,
    and nobody polls. Raises ValueError for tokens < 1 or a negative max_wait.
    """
    if int(tokens) != tokens or tokens < 1:
        raise ValueError(f"tokens must be an integer >= 1, got {tokens!r}")
    if not max_wait >= 0:
        raise ValueError(f"max_wait must be >= 0, got {max_wait!r}")
    if not limit.enabled:
        return True, 0.0
    granted, wait = _reserve(limit=limit, tokens=tokens, max_wait=max_wait, idle_start=idle_start, client=client)
    rate_limit_wait_observe(granted=granted, wait=wait)
    return granted, wait


def _reserve(
    *, limit: RateLimit, tokens: int, max_wait: float, idle_start: float, client: redis.Redis | None
) -> tuple[bool, float]:
    """One run of the GCRA script: (granted, wait)."""
    client = client if client is not None else redis_client()
    reply = _registered(client, _GCRA_LUA)(
        keys=[limit.key],
        args=[repr(1.0 / limit.per_second), int(limit.burst), int(tokens), repr(float(max_wait)), repr(float(idle_start))],
        client=client,
    )
    reply = reply.decode() if isinstance(reply, bytes) else str(reply)
    return reply[0] == "G", max(float(reply[1:]), 0.0)


def rate_limit_backlog(*, limit: RateLimit, client: redis.Redis | None = None) -> float:
    """Seconds until everything booked so far has been used (0.0 when idle or off)."""
    if not limit.enabled:
        return 0.0
    client = client if client is not None else redis_client()
    return max(float(_registered(client, _BACKLOG_LUA)(keys=[limit.key], args=[], client=client)), 0.0)


def rate_limit_from_settings() -> RateLimit:
    """The SES send limit from settings: SEND_RATE_PER_SECOND (default 14,
    ``<= 0`` means off) and SEND_RATE_BURST (default 1), on the default key."""
    return RateLimit(
        per_second=float(getattr(settings, "SEND_RATE_PER_SECOND", 14)),
        burst=int(getattr(settings, "SEND_RATE_BURST", 1)),
    )
