"""Rate limits per kind: at most `starts` starts per period across the whole pool, as a sliding window in Redis.

A token bucket would let up to twice the limit through in one period (a full bucket, then its refill); the
window keeps every start of the last period in a sorted set, so no window of that length ever holds more than
the limit. One script call per start batch and kind (or per reserve, below) takes what the window has room
for, atomically, on Redis's clock (one clock for every scheduler). A start whose token was taken but whose
database start then failed keeps its token until the period ends: that only makes the limit stricter.

The window is kept WINDOW_MARGIN_MS longer than the period. A token is taken just before the start's statement;
the handler begins once the commit, the change events and the reply have reached its worker: 26 to 105 ms
later on a loaded 2-core machine, varying from batch to batch. The margin keeps the handlers' own start times,
not only the grants, within the limit; it costs a limit of N per second about an eighth of its rate (N start
in every 1.15 s) and is nothing for periods of minutes.

Reserved starts: a scheduler whose kind's window has plenty of room (at least RESERVE_ROOM_FACTOR times what it
reserves left after the grant) takes RESERVE_STARTS more than it needs in the same call, and hands them to its next
start requests of the kind without asking Redis again, for RESERVE_HOLD_MS after it sent the call. Such a call
records all its starts at Redis's time plus RESERVE_HOLD_MS, the latest moment any of them may be handed out: a
start is never recorded earlier than it happens, so the window's count at every grant still includes every start
that may fall in the same period (the argument of the margin above, unchanged), across all schedulers. Reserved
starts not handed out in time (of any kind) are given back with the scheduler's next call to Redis; until then
they count, which is only stricter. A window without that much room
grants exactly what is asked, recorded at Redis's time, as before: near its limit, a kind is counted start by
start.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.core import keys

log = logging.getLogger(__name__)

# KEYS: window, sequence. ARGV: starts wanted, limit, period (ms), starts to reserve beyond them, how long they
# are held (ms), room the window must keep after the reserve. Returns {granted, room left, ms until the oldest
# start leaves the window (0 while there is room), the last member granted (the granted members are the `granted`
# numbers up to it)}: the reserve only when the window has that room, all its starts then recorded at now plus the
# hold. Members are sequence numbers: two starts in one microsecond are still two members. The sequence never
# expires, so a number is never granted twice: a member given back late (a reserve lapsed after the window emptied
# and expired) can only remove its own start, never a later one that reused its number. Every grant keeps the window
# for the period plus the longest hold (ARGV[5] is always passed), so no grant shortens the life of a reserve's
# members, recorded up to a hold ahead.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local wanted, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local period = tonumber(ARGV[3]) * 1000
local reserve, hold, keep = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - period)
local used = redis.call('ZCARD', KEYS[1])
local granted = math.min(wanted, math.max(0, limit - used))
local at = now
if reserve > 0 and limit - used - granted - reserve >= keep then
    granted = granted + reserve
    at = now + hold * 1000
end
local last = 0
if granted > 0 then
    last = redis.call('INCRBY', KEYS[2], granted)
    local args = {}
    for i = 1, granted do
        args[#args + 1] = at
        args[#args + 1] = last - granted + i
    end
    redis.call('ZADD', KEYS[1], unpack(args))
    redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) + hold)
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
# Reserved starts (see the module's docstring): how many a scheduler takes beyond what a start request needs, for
# how long it may hand them out, and how many times that the window must still have room for after the grant.
RESERVE_STARTS = 64
RESERVE_HOLD_MS = 100
RESERVE_ROOM_FACTOR = 4


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


async def take_or_wait(
    redis: aioredis.Redis,
    wanted: Sequence[tuple[str, int, RateLimit]],
    reserve: int = 0,
    lapsed: Sequence[tuple[str, Sequence[int]]] = (),
) -> list[Taken]:
    """take() for a start (reserving and giving back as _take): while Redis cannot be reached no token is granted
    (the limit is never exceeded; lapsed members stay, stricter) and the tasks wait UNREACHABLE_WAIT_MS before they
    are tried again, rather than failing the whole start request."""
    if not wanted:
        return []
    try:
        return await _take(redis, wanted, reserve, lapsed)
    except (RedisError, OSError) as exc:
        log.warning("rate limits unreachable; rate-limited tasks wait", extra={"error": repr(exc)})
        return [Taken(0, 0, UNREACHABLE_WAIT_MS) for _ in wanted]


async def _take(
    redis: aioredis.Redis,
    wanted: Sequence[tuple[str, int, RateLimit]],
    reserve: int = 0,
    lapsed: Sequence[tuple[str, Sequence[int]]] = (),
) -> list[Taken]:
    """take(), each kind reserving `reserve` starts more when its window has the room (RESERVE_ROOM_FACTOR); in the
    same round trip, first the `lapsed` members are given back (reserved starts no longer handed out)."""
    async with redis.pipeline(transaction=False) as pipe:
        for kind, members in lapsed:
            pipe.zrem(keys.rate_window(kind), *members)
        for kind, n, limit in wanted:
            window_ms = limit.period_ms + WINDOW_MARGIN_MS
            pipe.eval(
                _TAKE,
                2,
                keys.rate_window(kind),
                keys.rate_sequence(kind),
                n,
                limit.starts,
                window_ms,
                reserve,
                RESERVE_HOLD_MS,
                RESERVE_ROOM_FACTOR * reserve,
            )
        replies = await pipe.execute()
    return [Taken(int(r[0]), int(r[1]), int(r[2]), int(r[3])) for r in replies[len(lapsed) :]]


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


@dataclass
class _Reserve:
    """Starts a scheduler reserved for a kind's limit and has not handed out yet: the members first..last, to be
    handed out before `until` (monotonic seconds)."""

    limit: RateLimit
    first: int
    last: int
    until: float

    def left(self) -> int:
        return self.last - self.first + 1

    def hand_out(self, n: int) -> Taken:
        """n of them (the caller checked there are), as a grant of their own."""
        self.first += n
        return Taken(n, self.left(), 0, self.first - 1)

    def members(self) -> list[int]:
        return list(range(self.first, self.last + 1))


class RedisLimiter:
    """What a start's check (services.core.transitions.gates) asks of the windows in Redis; one per scheduler,
    shared by its workers' start requests.

    It keeps each kind's limit as last read under the kind's lock, so that a start can take its tokens before its
    transaction (take_ahead) rather than while holding its rows and its keys' locks. The check then uses them only
    if the limit it reads is still the one they were taken for, and gives back what it does not use: a stale
    limit costs a second call, never a start beyond the limit. Where a kind's window has plenty of room, take_ahead
    reserves starts beyond what it was asked for and serves the next requests from them (see the module's
    docstring), so a limit far from binding costs one Redis call per RESERVE_STARTS starts, not one per request.
    """

    def __init__(self, redis: aioredis.Redis, reserve: int = RESERVE_STARTS) -> None:
        self.redis = redis
        self.reserve = reserve
        self.known: dict[str, RateLimit | None] = {}
        self._reserves: dict[str, _Reserve] = {}
        # Reserved members no longer to be handed out, given back with the next call.
        self._lapsed: list[tuple[str, list[int]]] = []

    def remember(self, limits: Mapping[str, RateLimit | None]) -> None:
        self.known.update(limits)
        for kind, limit in limits.items():
            if kind in self._reserves and self._reserves[kind].limit != limit:
                self._lapse(kind)

    async def take_ahead(self, wanted: Mapping[str, int]) -> dict[str, TakenAhead]:
        """For the kinds last known to be limited: up to `wanted` starts each, from this scheduler's reserve while
        it lasts, else from the window (reserving more when it has the room)."""
        now = time.monotonic()
        self._lapse_expired(now)
        ahead: dict[str, TakenAhead] = {}
        asked: list[tuple[str, int, RateLimit]] = []
        for kind, n in wanted.items():
            if (limit := self.known.get(kind)) is None:
                continue
            reserve = self._reserves.get(kind)
            if reserve is not None and reserve.limit == limit and now < reserve.until and reserve.left() >= n:
                ahead[kind] = TakenAhead(limit, reserve.hand_out(n))
                continue
            self._lapse(kind)
            asked.append((kind, n, limit))
        if not asked:
            return ahead
        lapsed, self._lapsed = self._lapsed, []
        sent = time.monotonic()
        taken = await take_or_wait(self.redis, asked, self.reserve, lapsed)
        for (kind, n, limit), got in zip(asked, taken, strict=True):
            if got.granted > n:  # the reserve came too: the first n are this request's, the rest kept
                first = got.last - got.granted + 1
                self._lapse(kind)
                self._reserves[kind] = _Reserve(limit, first + n, got.last, sent + RESERVE_HOLD_MS / 1000)
                got = Taken(n, got.room, got.wait_ms, first + n - 1)
            ahead[kind] = TakenAhead(limit, got)
        return ahead

    def _lapse_expired(self, now: float) -> None:
        """Every kind's reserve past its time, not only the asked kinds': its members go back with this call rather
        than stand in other schedulers' way until they leave the window."""
        for kind in [kind for kind, reserve in self._reserves.items() if now >= reserve.until]:
            self._lapse(kind)

    def _lapse(self, kind: str) -> None:
        """The kind's reserve, if any, is handed out no more: its members go back with the next call."""
        reserve = self._reserves.pop(kind, None)
        if reserve is not None and reserve.left() > 0:
            self._lapsed.append((kind, reserve.members()))

    async def take(self, wanted: Sequence[tuple[str, int, RateLimit]]) -> list[Taken]:
        return await take_or_wait(self.redis, wanted)

    async def give_back(self, unused: Sequence[tuple[str, Sequence[int]]]) -> None:
        self._lapse_expired(time.monotonic())
        lapsed, self._lapsed = self._lapsed, []
        await give_back(self.redis, [*unused, *lapsed])
