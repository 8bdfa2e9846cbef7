"""Rate-limit starts reserved by a scheduler (services.core.rate_limits, RedisLimiter): where a kind's window has
plenty of room, one Redis call serves several start requests; the limit still holds across schedulers, and a
window near its limit is counted exactly, as before. On the session's real Valkey."""

from __future__ import annotations

import asyncio
import bisect
import random
import time
import uuid

import redis.asyncio as aioredis

from services.core import keys, rate_limits
from services.core.rate_limits import RESERVE_HOLD_MS, RESERVE_STARTS, WINDOW_MARGIN_MS, RateLimit
from tests.helpers import eventually


def new_kind() -> str:
    return f"k-{uuid.uuid4().hex[:8]}"


async def issued(redis: aioredis.Redis, kind: str) -> int:
    """Starts the kind's window ever granted (its sequence): one call granted each block of them."""
    return int(await redis.get(keys.rate_sequence(kind)) or 0)


async def window(redis: aioredis.Redis, kind: str) -> dict[int, float]:
    """The window's members and their scores (µs)."""
    return {int(m): s for m, s in await redis.zrange(keys.rate_window(kind), 0, -1, withscores=True)}


async def redis_now_us(redis: aioredis.Redis) -> int:
    seconds, micros = await redis.time()
    return seconds * 1_000_000 + micros


async def test_a_limit_far_from_binding_serves_several_requests_from_one_call(redis: aioredis.Redis) -> None:
    """The first request reserves RESERVE_STARTS more, recorded at the latest moment they may be handed out; the
    next requests take from them, with no call (the sequence does not move), each its own members."""
    kind = new_kind()
    limiter = rate_limits.RedisLimiter(redis)
    limiter.remember({kind: RateLimit(100_000, 1000)})
    before = await redis_now_us(redis)
    first = (await limiter.take_ahead({kind: 3}))[kind].taken
    second = (await limiter.take_ahead({kind: 5}))[kind].taken
    assert (first.granted, second.granted) == (3, 5)
    assert await issued(redis, kind) == 3 + RESERVE_STARTS
    assert set(first.members(3)).isdisjoint(second.members(5))
    scores = await window(redis, kind)
    assert len(scores) == 3 + RESERVE_STARTS
    assert min(scores.values()) >= before + RESERVE_HOLD_MS * 1000


async def test_a_window_near_its_limit_is_counted_start_by_start(redis: aioredis.Redis) -> None:
    """Too little room for a reserve: exactly what is asked, recorded now, one call each."""
    kind = new_kind()
    limiter = rate_limits.RedisLimiter(redis)
    limiter.remember({kind: RateLimit(10, 60_000)})
    taken = (await limiter.take_ahead({kind: 3}))[kind].taken
    again = (await limiter.take_ahead({kind: 9}))[kind].taken
    assert (taken.granted, again.granted) == (3, 7)
    assert await issued(redis, kind) == 10
    assert max((await window(redis, kind)).values()) <= await redis_now_us(redis)


async def test_a_reserve_not_handed_out_in_time_goes_back(redis: aioredis.Redis) -> None:
    """Past RESERVE_HOLD_MS the reserve is handed out no more: the next request calls again, and in that call the
    old reserve's members leave the window, which holds the starts handed out and the new reserve only."""
    kind = new_kind()
    limiter = rate_limits.RedisLimiter(redis)
    limiter.remember({kind: RateLimit(100_000, 60_000)})
    handed = (await limiter.take_ahead({kind: 2}))[kind].taken.members(2)

    async def called_again() -> bool:
        handed.extend((await limiter.take_ahead({kind: 1}))[kind].taken.members(1))
        return await issued(redis, kind) > 2 + RESERVE_STARTS

    await eventually(called_again, message="a request after the reserve's time calls Redis again")
    members = set(await window(redis, kind))
    assert set(handed) <= members
    assert len(members) == len(handed) + RESERVE_STARTS  # and the new reserve


async def test_a_changed_limit_gives_the_reserve_back(redis: aioredis.Redis) -> None:
    """Starts reserved for a limit are never handed out for another: the next request calls again and gives them
    back in that call."""
    kind = new_kind()
    limiter = rate_limits.RedisLimiter(redis)
    limiter.remember({kind: RateLimit(100_000, 60_000)})
    first = (await limiter.take_ahead({kind: 1}))[kind].taken
    limiter.remember({kind: RateLimit(20, 60_000)})
    lowered = await limiter.take_ahead({kind: 4})
    assert lowered[kind].limit == RateLimit(20, 60_000) and lowered[kind].taken.granted == 4
    assert set(await window(redis, kind)) == set(first.members(1)) | set(lowered[kind].taken.members(4))


async def test_two_schedulers_reserving_never_pass_the_limit(redis: aioredis.Redis) -> None:
    """Two schedulers' limiters, four requesters each, asking at once for 1 to 8 starts of a kind limited to 400
    per 500 ms (room for reserves while the window is far from full, none near it): no span of the period, nor of
    the period plus most of the margin, holds more than 400 starts handed out, and the limit is reached."""
    kind, limit = new_kind(), RateLimit(400, 500)
    limiters = [rate_limits.RedisLimiter(redis) for _ in range(2)]
    for limiter in limiters:
        limiter.remember({kind: limit})
    handed: list[float] = []
    rng = random.Random(7)

    async def requester(limiter: rate_limits.RedisLimiter) -> None:
        for _ in range(250):
            got = (await limiter.take_ahead({kind: rng.randint(1, 8)}))[kind].taken.granted
            handed.extend([time.monotonic()] * got)

    began = time.monotonic()
    await asyncio.gather(*(requester(limiter) for limiter in limiters for _ in range(4)))
    handed.sort()
    assert len(handed) >= limit.starts, "the limit was reached"
    for span_ms in (limit.period_ms, limit.period_ms + WINDOW_MARGIN_MS // 2):
        busiest = max(bisect.bisect_left(handed, start + span_ms / 1000) - i for i, start in enumerate(handed))
        assert busiest <= limit.starts, (span_ms, busiest, time.monotonic() - began)


async def test_a_reserve_given_back_after_the_window_emptied_takes_no_later_start_out_of_it(
    redis: aioredis.Redis,
) -> None:
    """Scheduler A reserves, then the kind is idle past its window (the window's key expires); B hands out starts;
    A's next call gives its old reserve back: every start B handed out is still counted."""
    kind, limit = new_kind(), RateLimit(1000, 100)
    a, b = rate_limits.RedisLimiter(redis), rate_limits.RedisLimiter(redis)
    for limiter in (a, b):
        limiter.remember({kind: limit})
    await a.take_ahead({kind: 1})

    async def window_gone() -> bool:
        return not await redis.exists(keys.rate_window(kind))

    await eventually(window_gone, message="the idle kind's window expires")
    handed = (await b.take_ahead({kind: 1}))[kind].taken.members(1)
    handed += (await b.take_ahead({kind: 60}))[kind].taken.members(60)
    await a.take_ahead({kind: 1})  # A's reserve is past its time: given back in this call
    assert set(handed) <= set(await window(redis, kind))


async def test_a_grant_without_a_reserve_never_shortens_a_reserves_life_in_the_window(redis: aioredis.Redis) -> None:
    """A reserve's members are recorded a hold ahead; a plain grant (the checked path's take) right after keeps the
    window's key alive at least until the last of them leaves the window."""
    kind, limit = new_kind(), RateLimit(100_000, 1000)
    limiter = rate_limits.RedisLimiter(redis)
    limiter.remember({kind: limit})
    await limiter.take_ahead({kind: 1})
    await rate_limits.take(redis, [(kind, 1, limit)])
    latest_us = max((await window(redis, kind)).values())
    lives_ms = await redis.pttl(keys.rate_window(kind))
    left_ms = (latest_us + (limit.period_ms + WINDOW_MARGIN_MS) * 1000 - await redis_now_us(redis)) / 1000
    assert lives_ms >= left_ms - 1


async def test_a_reserve_past_its_time_goes_back_with_a_call_for_another_kind(redis: aioredis.Redis) -> None:
    """A scheduler that no longer starts a kind does not keep its reserve counted: the next call it makes, for any
    kind, gives it back, and another scheduler then has the whole limit less what was handed out."""
    kind, other, limit = new_kind(), new_kind(), RateLimit(400, 60_000)
    a, b = rate_limits.RedisLimiter(redis), rate_limits.RedisLimiter(redis)
    a.remember({kind: limit, other: limit})
    b.remember({kind: limit})
    await a.take_ahead({kind: 1})
    assert len(await window(redis, kind)) == 1 + RESERVE_STARTS

    async def given_back() -> bool:
        await a.take_ahead({other: 1})
        return len(await window(redis, kind)) == 1

    await eventually(given_back, message="the stale reserve is given back with a call for another kind")
    assert (await b.take_ahead({kind: 1000}))[kind].taken.granted == limit.starts - 1
