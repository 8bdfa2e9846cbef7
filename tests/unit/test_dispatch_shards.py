"""A kind's dispatch streams split into shards (RTASK_DISPATCH_SHARDS): one shard keeps every name and reference of
before; with more, a batch spreads over the shards by task id, each shard's levels share one slot and the shards
of a kind land on different primaries, and a worker reads, reclaims and acknowledges every shard, still in
priority order (against a real Valkey)."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator
from fnmatch import fnmatchcase

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

import services.worker.builtin  # noqa: F401  (registers sleep)
from resilienttask.v1 import task_pb2
from services.core import keys
from services.core.config import ConfigError, RedisConfig
from services.core.dispatch import DispatchEntry, entry_ref, parse_ref, publish, split_ref
from services.core.redis_acl import USERS, WORKER
from services.core.redis_client import key_layout
from services.core.settings import load
from services.stack.valkey_cluster import slot_ranges
from services.worker.consumer import AGING_EVERY_READS, DispatchConsumer
from services.worker.worker import Worker
from tests.conftest import Stores
from tests.helpers import eventually
from tests.unit.dispatch_streams import KIND, dispatch_redis, entries
from tests.unit.scripted_scheduler import Script, make_auth, serve
from tests.unit.test_worker_protocol import worker_config

SHARDS = 3
SHARDED = keys.KeyLayout(dispatch_shards=SHARDS)


@pytest.fixture
async def redis(stores: Stores) -> AsyncIterator[aioredis.Redis]:
    """Database 12 of the session's Valkey (no stack process reads it), through a client with 3 shards."""
    async with dispatch_redis(stores, 12, shards=SHARDS) as client:
        yield client


def test_the_setting_is_read_by_every_process_and_bounded() -> None:
    assert load(RedisConfig, {"REDIS_URL": "redis://u@h:6379/0"}).dispatch_shards == 1
    assert load(RedisConfig, {"REDIS_URL": "redis://u@h:6379/0", "RTASK_DISPATCH_SHARDS": "3"}).dispatch_shards == 3
    for bad in ("0", str(keys.MAX_DISPATCH_SHARDS + 1)):
        with pytest.raises(ConfigError, match="RTASK_DISPATCH_SHARDS"):
            load(RedisConfig, {"REDIS_URL": "redis://u@h:6379/0", "RTASK_DISPATCH_SHARDS": bad})


def test_shard_zero_keeps_the_names_and_references_of_before() -> None:
    for layout in (keys.SINGLE, keys.CLUSTER):
        sharded = keys.KeyLayout(cluster=layout.cluster, dispatch_shards=SHARDS)
        for priority in keys.PRIORITIES:
            assert sharded.dispatch_stream(KIND, priority, 0) == layout.dispatch_stream(KIND, priority)
    assert entry_ref(KIND, "1-0", 3, 0) == "sleep:1-0"
    assert keys.SINGLE.dispatch_shard(str(uuid.uuid4())) == 0


def test_references_name_the_shard() -> None:
    for kind in ("sleep", "a:b", "x:s1", "s2", "weird:1-0:p5"):
        for priority in keys.PRIORITIES:
            for shard in range(SHARDS):
                ref = entry_ref(kind, "1700000000000-7", priority, shard)
                assert parse_ref(ref) == (kind, "1700000000000-7", priority, shard)
                assert split_ref(ref, SHARDED) == (SHARDED.dispatch_stream(kind, priority, shard), "1700000000000-7")
    streams = {SHARDED.dispatch_stream(KIND, p, s) for p in keys.PRIORITIES for s in range(SHARDS)}
    assert len(streams) == len(keys.PRIORITIES) * SHARDS
    for bad in ("sleep:1-0:s0", "sleep:1-0:s", "sleep:1-0:sx", "sleep:1-0:s01"):
        with pytest.raises(ValueError, match="malformed"):
            parse_ref(bad)
    with pytest.raises(ValueError, match="out of range"):
        split_ref("sleep:1-0:s3", SHARDED)


@pytest.mark.parametrize("kind", ["sleep", "fail", "spin", "bench.noop", "test.gated.recorded", "a:b", "x~1"])
def test_on_a_cluster_each_shard_has_a_slot_and_the_shards_one_primary_each(kind: str) -> None:
    cluster = keys.KeyLayout(cluster=True, dispatch_shards=SHARDS)
    ranges = slot_ranges(3)

    def node(key: str) -> int:
        slot = key_slot(key.encode())
        return next(i for i, (low, high) in enumerate(ranges) if low <= slot <= high)

    for shard in range(SHARDS):
        levels = [cluster.dispatch_stream(kind, p, shard) for p in keys.PRIORITIES]
        assert len({key_slot(s.encode()) for s in levels}) == 1, "one read per shard takes every level"
        assert all(any(fnmatchcase(s, p) for p in USERS[WORKER].key_patterns) for s in levels), "worker ACL"
    assert {node(cluster.dispatch_stream(kind, 3, s)) for s in range(SHARDS)} == {0, 1, 2}


async def test_a_batch_spreads_over_the_shards_and_a_worker_takes_each_entry_once_most_urgent_first(
    redis: aioredis.Redis,
) -> None:
    assert key_layout(redis) == SHARDED and key_layout(redis.pipeline()) == SHARDED
    low, high = entries(1, 30), entries(5, 30)
    refs = await publish(redis, low + high)
    by_task = dict(zip((e.task_id for e in low + high), refs, strict=True))
    for entry, ref in zip(low + high, refs, strict=True):
        assert parse_ref(ref)[3] == SHARDED.dispatch_shard(entry.task_id)
    lengths = [await redis.xlen(SHARDED.dispatch_stream(KIND, 1, s)) for s in range(SHARDS)]
    assert sum(lengths) == 30 and all(lengths), f"every shard has entries: {lengths}"

    consumer = DispatchConsumer(redis, "w1", [KIND])
    delivered = []
    for _ in range(AGING_EVERY_READS - 1):  # fewer reads than AGING_EVERY_READS: strict priority
        delivered += await consumer.read(20, block_ms=10)
    assert len(delivered) == len(refs)
    assert await consumer.read(4, block_ms=10) == [], "each entry once"
    assert Counter(d.entry.task_id for d in delivered) == Counter(by_task.keys())
    assert all(by_task[d.entry.task_id] == d.entry_id for d in delivered), "the reference names the entry's shard"
    priorities = [d.entry.priority for d in delivered]
    assert priorities == sorted(priorities, reverse=True), "every shard's urgent level before any lower one"

    live = DispatchConsumer(redis, "w2", [KIND])
    reclaimed = await live.reclaim(100, min_idle_ms=0)
    assert sorted(d.entry_id for d in reclaimed) == sorted(refs), "a reclaim pass covers every shard"
    await live.refresh(refs)
    assert await live.owned(refs) == set(refs)
    await live.ack(refs)
    assert await live.owned(refs) == set()
    for shard in range(SHARDS):
        for priority in (1, 5):
            assert await redis.xlen(SHARDED.dispatch_stream(KIND, priority, shard)) == 0, "acked on its own stream"


async def test_a_worker_runs_no_more_than_its_slots_from_a_batch_spread_over_shards(redis: aioredis.Redis) -> None:
    """One read of 3 shards may bring up to `free` entries from each: the worker keeps its free slots' worth and
    hands the rest back, which it (or another worker) takes again once slots free up."""
    auth, script = make_auth(), Script()
    server, _, port = await serve(auth, script)
    worker = Worker(worker_config(port), redis, auth.enrolment)  # 4 slots
    peak = 0
    try:
        await worker.start()
        tasks = [task_pb2.Task(id=str(uuid.uuid4()), kind=KIND, attempt=1) for _ in range(12)]
        for task in tasks:
            task.workload.FromMilliseconds(300)
            script.tasks[task.id] = task
        refs = await publish(redis, [DispatchEntry(t.id, str(uuid.uuid4()), KIND) for t in tasks])
        assert len({parse_ref(ref)[3] for ref in refs}) == SHARDS

        async def all_finished() -> bool:
            nonlocal peak
            peak = max(peak, len(worker.running))
            return {f.task.task_id for f in script.finishes} == {t.id for t in tasks}

        await eventually(all_finished, interval_s=0.005, message="every task finished")
    finally:
        await worker.stop(drain_grace_s=0)
        await server.stop(None)
    assert 0 < peak <= 4, f"handlers at once: {peak}"
    assert Counter(s.task_id for s in script.starts) == Counter(t.id for t in tasks), "each started once"
