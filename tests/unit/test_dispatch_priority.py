"""Priority lanes of the dispatch streams against a real Valkey: references name every stream unambiguously, a
worker reads the most urgent level first, lower levels still get turns, and a reclaim pass covers every level.
Also the max-min fair level the slot cap is lowered to."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from services.core import keys
from services.core.dispatch import entry_ref, parse_ref, publish, split_ref
from services.core.limits import UserLimits, fair_level
from services.worker.consumer import AGING_EVERY_READS, DispatchConsumer
from tests.conftest import Stores
from tests.unit.dispatch_streams import KIND, dispatch_redis, entries


@pytest.fixture
async def redis(stores: Stores) -> AsyncIterator[aioredis.Redis]:
    """Database 11 of the session's Valkey: no stack process reads it."""
    async with dispatch_redis(stores, 11) as client:
        yield client


def test_references_name_each_stream_unambiguously() -> None:
    for kind in ("sleep", "a:b", "x:p5", "p5", "weird:1-0"):
        for priority in keys.PRIORITIES:
            ref = entry_ref(kind, "1700000000000-7", priority)
            assert parse_ref(ref) == (kind, "1700000000000-7", priority, 0)
            assert split_ref(ref) == (keys.dispatch_stream(kind, priority), "1700000000000-7")
    # The default level keeps the reference and stream of before, so entries published earlier still resolve.
    assert entry_ref("sleep", "1-0") == "sleep:1-0"
    assert split_ref("sleep:1-0") == ("rt:dispatch:sleep", "1-0")
    assert len({keys.dispatch_stream("sleep", p) for p in keys.PRIORITIES}) == len(keys.PRIORITIES)
    for bad in ("sleep:1-0:p9", "sleep:1-0:p", ":1-0", "1-0"):
        with pytest.raises(ValueError, match="malformed"):
            parse_ref(bad)


async def test_a_read_takes_the_most_urgent_level_first(redis: aioredis.Redis) -> None:
    low, default, high = entries(1, 3), entries(3, 3), entries(5, 3)
    await publish(redis, low + default + high)  # the most urgent published last
    consumer = DispatchConsumer(redis, "w1", [KIND])
    order: list[int] = []
    for _ in range(5):  # fewer reads than AGING_EVERY_READS: strict priority
        order += [d.entry.priority for d in await consumer.read(2, block_ms=10)]
    assert order == [5, 5, 5, 3, 3, 3, 1, 1, 1]
    first = await consumer.read(1, block_ms=10)
    assert first == [], "every entry was delivered once"


async def test_a_lower_level_gets_turns_under_a_flood_of_urgent_work(redis: aioredis.Redis) -> None:
    flood = entries(5, 6 * AGING_EVERY_READS)
    (old,) = entries(1, 1)
    await publish(redis, [old, *flood])
    consumer = DispatchConsumer(redis, "w1", [KIND])
    delivered: list[str] = []
    while len(delivered) < len(flood) + 1:
        delivered += [d.entry.task_id for d in await consumer.read(1, block_ms=10)]
    position = delivered.index(old.task_id)
    # The levels below the top take turns, one aged read in AGING_EVERY_READS: level 1's turn is the fourth.
    assert position < 4 * AGING_EVERY_READS, position
    assert position > 0, "strict priority between the aged reads"


async def test_a_reclaim_pass_covers_every_level(redis: aioredis.Redis) -> None:
    published = entries(5, 2) + entries(3, 2) + entries(1, 2)
    refs = await publish(redis, published)
    dead = DispatchConsumer(redis, "dead", [KIND])
    taken = []
    while len(taken) < len(published):
        taken += await dead.read(10, block_ms=10)
    live = DispatchConsumer(redis, "live", [KIND])
    reclaimed = await live.reclaim(10, min_idle_ms=0)
    assert sorted(d.entry_id for d in reclaimed) == sorted(refs)
    assert all(d.reclaimed for d in reclaimed)
    await live.ack(refs)
    assert await live.owned(refs) == set()


def test_fair_level_is_max_min_fair_and_work_conserving() -> None:
    assert fair_level(30, []) == 30
    assert fair_level(30, [5000]) == 30, "a lone owner may use the whole pool"
    assert fair_level(30, [5000, 5000]) == 15
    assert fair_level(30, [5000, 2]) == 28, "an owner wanting little keeps it; the other takes the rest"
    assert fair_level(30, [10, 10]) == 30, "no cap while every demand fits"
    assert fair_level(30, [5000, 5000, 5000, 1]) == 10


def test_the_slot_cap_is_the_share_lowered_to_the_fair_level() -> None:
    fair = UserLimits(slot_share=1, fair_headroom_share=0.25)
    assert fair.slots_per_user(40, [5000]) == 50
    assert fair.slots_per_user(40, [5000, 5000]) == 30
    capped = UserLimits(slot_share=0.5, fair_headroom_share=0)
    assert capped.slots_per_user(40, [5000]) == 20, "the slot share stays the ceiling"
    assert capped.slots_per_user(40, [5000] * 4) == 10
    assert UserLimits(slot_share=1, fair_share=False).slots_per_user(40, [5000, 5000]) is None
    assert UserLimits.unlimited().slots_per_user(40, [5000, 5000]) is None
