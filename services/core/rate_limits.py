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

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.core import keys

log = logging.getLogger(__name__)

# KEYS: window, sequence. ARGV: starts wanted, limit, period (ms). Returns {granted, room left, ms until the
# oldest start leaves the window (0 while there is room), the last member granted (the granted members are the
# `granted` numbers up to it)}. Members are sequence numbers: two starts in one microsecond are still two members.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local wanted, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local period = tonumber(ARGV[3]) * 1000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - period)
local used = redis.call('ZCARD', KEYS[1])
local granted = math.min(wanted, math.max(0, limit - used))
local last = 0
if granted > 0 then
    last = redis.call('INCRBY', KEYS[2], granted)
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
return {granted, room, wait, last}
"""


WINDOW_MARGIN_MS = 150
UNREACHABLE_WAIT_MS = 1000


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
    # The members granted are the `granted` sequence numbers up to this one (0: none granted).
    last: int = 0

    def members(self, n: int) -> list[int]:
        """n of the members granted (for give_back)."""
        return list(range(self.last - min(n, self.granted) + 1, self.last + 1))


@dataclass(frozen=True)
class TakenAhead:
    """Starts a start took before its transaction, for the limit its kind had when last read."""

    limit: RateLimit
    taken: Taken


async def take(redis: aioredis.Redis, wanted: Sequence[tuple[str, int, RateLimit]]) -> list[Taken]:
    """For each (kind, starts wanted, its limit): take what the kind's window has room for, in one round trip.
    wanted 0 takes nothing and tells the room (the sweeper's question)."""
    if not wanted:
        return []
    return await _take(redis, wanted)


async def take_or_wait(redis: aioredis.Redis, wanted: Sequence[tuple[str, int, RateLimit]]) -> list[Taken]:
    """take() for a start: while Redis cannot be reached no token is granted (the limit is never exceeded) and
    the tasks wait UNREACHABLE_WAIT_MS before they are tried again, rather than failing the whole start request."""
    try:
        return await take(redis, wanted)
    except (RedisError, OSError) as exc:
        log.warning("rate limits unreachable; rate-limited tasks wait", extra={"error": repr(exc)})
        return [Taken(0, 0, UNREACHABLE_WAIT_MS) for _ in wanted]


async def _take(redis: aioredis.Redis, wanted: Sequence[tuple[str, int, RateLimit]]) -> list[Taken]:
    async with redis.pipeline(transaction=False) as pipe:
        for kind, n, limit in wanted:
            window_ms = limit.period_ms + WINDOW_MARGIN_MS
            pipe.eval(_TAKE, 2, keys.rate_window(kind), keys.rate_sequence(kind), n, limit.starts, window_ms)
        replies = await pipe.execute()
    return [Taken(int(r[0]), int(r[1]), int(r[2]), int(r[3])) for r in replies]


async def give_back(redis: aioredis.Redis, unused: Sequence[tuple[str, Sequence[int]]]) -> None:
    """Remove from their kinds' windows the members of starts that were granted but did not happen (the task was
    then held for another reason), in one round trip. Removing a start that did not happen never lets the window
    hold more than the limit of starts that did; if Redis cannot be reached, they stay (stricter, never looser)."""
    unused = [(kind, members) for kind, members in unused if members]
    if not unused:
        return
    try:
        async with redis.pipeline(transaction=False) as pipe:
            for kind, members in unused:
                pipe.zrem(keys.rate_window(kind), *members)
            await pipe.execute()
    except (RedisError, OSError) as exc:
        log.warning("unused rate-limit starts not given back", extra={"error": repr(exc)})


class RedisLimiter:
    """What a start's check (services.core.transitions.gates) asks of the windows in Redis.

    It keeps each kind's limit as last read under the kind's lock, so that a start can take its tokens before its
    transaction (take_ahead) rather than while holding its rows and its keys' locks. The check then uses them only
    if the limit it reads is still the one they were taken for, and gives back what it does not use: a stale
    limit costs a second call, never a start beyond the limit.
    """

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self.known: dict[str, RateLimit | None] = {}

    def remember(self, limits: Mapping[str, RateLimit | None]) -> None:
        self.known.update(limits)

    async def take_ahead(self, wanted: Mapping[str, int]) -> dict[str, TakenAhead]:
        """For the kinds last known to be limited: up to `wanted` starts each."""
        asked = [(kind, n, limit) for kind, n in wanted.items() if (limit := self.known.get(kind)) is not None]
        if not asked:
            return {}
        taken = await self.take(asked)
        return {kind: TakenAhead(limit, got) for (kind, _n, limit), got in zip(asked, taken, strict=True)}

    async def take(self, wanted: Sequence[tuple[str, int, RateLimit]]) -> list[Taken]:
        return await take_or_wait(self.redis, wanted)

    async def give_back(self, unused: Sequence[tuple[str, Sequence[int]]]) -> None:
        await give_back(self.redis, unused)
