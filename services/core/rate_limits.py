"""Rate limits per kind: at most `starts` starts per period across the whole pool, as a sliding window in Redis.

A token bucket would let up to twice the limit through in one period (a full bucket, then its refill); the
window keeps every start of the last period in a sorted set, so no window of that length ever holds more than
the limit. One script call per start batch and kind takes what the window has room for, atomically, on Redis's
clock (one clock for every scheduler). A start whose token was taken but whose database start then failed
keeps its token until the period ends: that only makes the limit stricter.

The window is kept WINDOW_MARGIN_MS longer than the period. A token is taken inside the start's transaction;
the handler begins once the commit, the change events and the reply have reached its worker: 26 to 105 ms
later on a loaded 2-core machine, varying from batch to batch. The margin keeps the handlers' own start times,
not only the grants, within the limit; it costs a limit of N per second about an eighth of its rate (N start
in every 1.15 s) and is nothing for periods of minutes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis

from services.core import keys

# KEYS: window, sequence. ARGV: starts wanted, limit, period (ms). Returns {granted, room left, ms until the
# oldest start leaves the window (0 while there is room)}. Members are sequence numbers: two starts in one
# microsecond are still two members.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local wanted, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local period = tonumber(ARGV[3]) * 1000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - period)
local used = redis.call('ZCARD', KEYS[1])
local granted = math.min(wanted, math.max(0, limit - used))
if granted > 0 then
    local last = redis.call('INCRBY', KEYS[2], granted)
    local args = {}
    for i = 1, granted do
        args[#args + 1] = now
        args[#args + 1] = last - granted + i
    end
    redis.call('ZADD', KEYS[1], unpack(args))
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
    redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
local room = math.max(0, limit - used - granted)
local wait = 0
if room == 0 then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    if oldest[2] then
        wait = math.max(1, math.ceil((tonumber(oldest[2]) + period - now) / 1000))
    end
end
return {granted, room, wait}
"""


WINDOW_MARGIN_MS = 150


@dataclass(frozen=True)
class RateLimit:
    starts: int
    period_ms: int


@dataclass(frozen=True)
class Taken:
    """What one call got: starts granted, room left in the window, and (when none is left) how long until the
    oldest start leaves it."""

    granted: int
    room: int
    wait_ms: int


async def take(redis: aioredis.Redis, wanted: Sequence[tuple[str, int, RateLimit]]) -> list[Taken]:
    """For each (kind, starts wanted, its limit): take what the kind's window has room for, in one round trip.
    wanted 0 takes nothing and tells the room (the sweeper's question)."""
    if not wanted:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for kind, n, limit in wanted:
            window_ms = limit.period_ms + WINDOW_MARGIN_MS
            pipe.eval(_TAKE, 2, keys.rate_window(kind), keys.rate_sequence(kind), n, limit.starts, window_ms)
        replies = await pipe.execute()
    return [Taken(int(r[0]), int(r[1]), int(r[2])) for r in replies]
