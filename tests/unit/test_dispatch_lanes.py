"""The share and surplus lanes of the dispatch streams against a real Valkey: references and stream names tell the
lanes apart (the share lane keeps the names of before), a worker reads a level's share lane before its surplus
lane and both before the next level down, and reclaim, refresh, release, ack and owned() cover the surplus lane."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from fnmatch import fnmatchcase

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from services.core import keys
from services.core.dispatch import (
    DispatchEntry,
    ensure_dispatch_groups,
    entry_ref,
    parse_lane_ref,
    parse_ref,
    publish,
    split_ref,
)
from services.core.redis_client import key_layout
from services.worker.consumer import AGING_EVERY_READS, DispatchConsumer
from tests.conftest import Stores, admin_redis
from tests.unit.dispatch_streams import KIND, dispatch_redis, entries

SHARDS = 3


@pytest.fixture
async def redis(stores: Stores, single_redis: None) -> AsyncIterator[aioredis.Redis]:
    """Database 13 of the session's Valkey: no stack process reads it (one server only: a cluster has one
    database; the last test here runs on either)."""
    async with dispatch_redis(stores, 13) as client:
        yield client


def surplus(batch: list[DispatchEntry]) -> list[DispatchEntry]:
    return [replace(entry, surplus=True) for entry in batch]


def test_references_and_streams_tell_the_lanes_apart() -> None:
    layouts = (
        keys.SINGLE,
        keys.KeyLayout(dispatch_shards=SHARDS),
        keys.KeyLayout(cluster=True, dispatch_shards=SHARDS),
    )
    for kind in ("sleep", "a:b", "x:u", "u", "weird:1-0:p5:s1"):
        for priority in keys.PRIORITIES:
            for shard in range(SHARDS):
                for lane in (False, True):
                    ref = entry_ref(kind, "1700000000000-7", priority, shard, lane)
                    assert parse_lane_ref(ref) == (kind, "1700000000000-7", priority, shard, lane)
                    assert parse_ref(ref) == (kind, "1700000000000-7", priority, shard)
    # The share lane keeps the references and streams of before; the surplus lane's are its own.
    assert entry_ref("sleep", "1-0", 3, 0, False) == "sleep:1-0"
    assert split_ref("sleep:1-0:u") == ("rt:dispatch-u:sleep", "1-0")
    assert split_ref("sleep:1-0:p5:u") == ("rt:dispatch-p5-u:sleep", "1-0")
    for layout in layouts:
        streams = {
            layout.dispatch_stream(kind, p, s, lane)
            for kind in ("sleep", "u", "x-u", "p5")
            for p in keys.PRIORITIES
            for s in range(layout.dispatch_shards)
            for lane in (False, True)
        }
        assert len(streams) == 4 * len(keys.PRIORITIES) * layout.dispatch_shards * 2
    # On a cluster both lanes of a shard's levels share its slot, so one command may read them all.
    cluster = keys.KeyLayout(cluster=True, dispatch_shards=SHARDS)
    for shard in range(SHARDS):
        slots = {
            key_slot(cluster.dispatch_stream(KIND, p, shard, lane).encode())
            for p in keys.PRIORITIES
            for lane in (False, True)
        }
        assert len(slots) == 1


def test_the_workers_acl_patterns_cover_the_surplus_lanes() -> None:
    layout = keys.KeyLayout(dispatch_shards=SHARDS)
    for p in keys.PRIORITIES:
        for s in range(SHARDS):
            stream = layout.dispatch_stream(KIND, p, s, True)
            assert any(fnmatchcase(stream, pattern) for pattern in keys.DISPATCH_STREAM_PATTERNS), stream


async def test_a_read_takes_the_share_lane_before_the_surplus_lane_of_each_level(redis: aioredis.Redis) -> None:
    # Published surplus first, the most urgent last: the order comes from the lanes, not the arrival.
    published = surplus(entries(1, 2)) + entries(1, 2) + surplus(entries(5, 2)) + entries(3, 2) + entries(5, 2)
    await publish(redis, published)
    consumer = DispatchConsumer(redis, "w1", [KIND])
    order: list[tuple[int, bool]] = []
    while len(order) < len(published):  # reads 1 to 5: before the surplus lanes' turn, strict order
        order += [(d.entry.priority, d.entry.surplus) for d in await consumer.read(2, block_ms=10)]
        if len(order) == 6:
            consumer._reads = AGING_EVERY_READS  # skip the reads with turns (below)
    assert order == [(5, False)] * 2 + [(5, True)] * 2 + [(3, False)] * 2 + [(1, False)] * 2 + [(1, True)] * 2
    assert await consumer.read(1, block_ms=10) == [], "every entry was delivered once"


async def test_a_surplus_lane_gets_turns_while_its_share_lane_stays_busy(redis: aioredis.Redis) -> None:
    (waiting,) = surplus(entries(5, 1))
    await publish(redis, [waiting, *entries(5, 3 * AGING_EVERY_READS)])
    consumer = DispatchConsumer(redis, "w1", [KIND])
    delivered: list[str] = []
    while waiting.task_id not in delivered:
        delivered += [d.entry.task_id for d in await consumer.read(1, block_ms=10)]
    assert 1 < len(delivered) <= AGING_EVERY_READS, len(delivered)


async def test_a_blocked_read_wakes_for_the_surplus_lane(redis: aioredis.Redis) -> None:
    consumer = DispatchConsumer(redis, "w1", [KIND])
    reading = consumer.read(5, block_ms=5000)
    (entry,) = surplus(entries(2, 1))

    async def later() -> None:
        await publish(redis, [entry])

    delivered, _ = await asyncio.gather(reading, later())
    assert [(d.entry.task_id, d.entry.surplus) for d in delivered] == [(entry.task_id, True)]


async def test_reclaim_refresh_release_ack_and_owned_cover_the_surplus_lane(redis: aioredis.Redis) -> None:
    published = surplus(entries(5, 2)) + surplus(entries(3, 2)) + entries(3, 1)
    refs = await publish(redis, published)
    assert sum(parse_lane_ref(ref)[4] for ref in refs) == 4
    dead = DispatchConsumer(redis, "dead", [KIND])
    taken = []
    while len(taken) < len(published):
        taken += await dead.read(10, block_ms=10)
    assert await dead.owned(refs) == set(refs)
    await dead.refresh(refs)
    await dead.release(refs[:2], idle_ms=60_000)
    live = DispatchConsumer(redis, "live", [KIND])
    reclaimed = await live.reclaim(10, min_idle_ms=30_000)
    assert sorted(d.entry_id for d in reclaimed) == sorted(refs[:2]), "the released ones, idle at once"
    third = DispatchConsumer(redis, "third", [KIND])
    reclaimed = await third.reclaim(10, min_idle_ms=0)
    assert sorted(d.entry_id for d in reclaimed) == sorted(refs)
    assert all(d.entry.surplus == parse_lane_ref(d.entry_id)[4] for d in reclaimed)
    await live.ack(refs)
    assert await live.owned(refs) == set()
    for lane in (False, True):
        assert await redis.xlen(keys.dispatch_stream(KIND, 3, lane)) == 0, "acked and deleted in its own lane"


async def test_on_the_sessions_layout_a_read_takes_the_lanes_in_order(stores: Stores) -> None:
    """The session's own Valkey: one server, or with --redis-cluster a cluster (and --dispatch-shards its shards),
    where the non-blocking reads go out one command per slot. A kind of its own, which no stack worker serves."""
    kind = f"lanes-{uuid.uuid4().hex[:8]}"
    redis = admin_redis(stores)
    layout = key_layout(redis)
    try:
        await ensure_dispatch_groups(redis, [kind])
        made = [
            replace(entry, kind=kind, surplus=lane)
            for priority, lane in ((1, True), (1, False), (4, True), (4, False))
            for entry in entries(priority, 3)
        ]
        refs = await publish(redis, made)
        consumer = DispatchConsumer(redis, "w1", [kind])
        delivered = await consumer.read(len(made), block_ms=10)
        assert sorted(d.entry_id for d in delivered) == sorted(refs)
        order = [(-d.entry.priority, d.entry.surplus) for d in delivered]
        assert order == sorted(order), "each level's share lane, then its surplus lane, the most urgent first"
        assert await consumer.owned(refs) == set(refs)
        await consumer.ack(refs)
        assert await consumer.owned(refs) == set()
    finally:
        await redis.delete(
            *(
                layout.dispatch_stream(kind, p, s, lane)
                for p in keys.PRIORITIES
                for s in range(layout.dispatch_shards)
                for lane in (False, True)
            )
        )
        await redis.aclose()
