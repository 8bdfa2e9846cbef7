"""Key names on one server and on a cluster: one server keeps the names it always had (a deployment upgraded in
place keeps its data), and on a cluster the keys each script or read uses together share one hash slot."""

from __future__ import annotations

import uuid
from fnmatch import fnmatchcase

import pytest
from redis.crc import key_slot

from services.core import keys
from services.core.config import ConfigError, RedisConfig
from services.core.redis_acl import USERS, WORKER
from services.core.settings import load
from services.stack.valkey_cluster import slot_ranges


def slot(key: str) -> int:
    return key_slot(key.encode())


def test_one_server_keeps_every_name_it_had() -> None:
    single, owner, task = keys.SINGLE, str(uuid.uuid4()), str(uuid.uuid4())
    assert single.dispatch_stream("sleep") == "rt:dispatch:sleep"
    assert single.dispatch_stream("sleep", 5) == "rt:dispatch-p5:sleep"
    assert single.feed_shards == single.log_shards == 1
    assert (single.feed_stream(0), single.feed_sequence(0)) == ("rt:feed:events", "rt:feed:seq")
    assert single.owner_events_stream(owner) == f"rt:events:{owner}" == keys.owner_events_stream(owner)
    assert single.task_log_stream(task) == f"rt:logs:{task}" == keys.task_log_stream(task)
    assert single.task_log_meta(task) == f"rt:logmeta:{task}" == keys.task_log_meta(task)
    assert (single.task_logs_index(0), single.task_logs_bytes(0)) == ("rt:logindex", "rt:logbytes")
    assert single.task_log_prefix(0) + task == single.task_log_stream(task)


@pytest.mark.parametrize("kind", ["sleep", "fail", "spin", "bench.noop", "test.gated.recorded", "a:b"])
def test_a_kinds_priority_streams_share_a_slot_on_a_cluster(kind: str) -> None:
    streams = [keys.CLUSTER.dispatch_stream(kind, p) for p in keys.PRIORITIES]
    assert len(set(streams)) == len(keys.PRIORITIES)
    assert len({slot(s) for s in streams}) == 1
    # Still dispatch streams to the worker's ACL user.
    patterns = USERS[WORKER].key_patterns
    assert all(any(_matches(p, s) for p in patterns) for s in streams)


def test_an_owners_stream_shares_the_slot_of_its_feed_shard() -> None:
    cluster = keys.CLUSTER
    shards_used = set()
    for _ in range(200):
        owner = str(uuid.uuid4())
        shard = cluster.feed_shard(owner)
        shards_used.add(shard)
        together = {cluster.owner_events_stream(owner), cluster.feed_stream(shard), cluster.feed_sequence(shard)}
        assert len({slot(k) for k in together}) == 1
        assert cluster.feed_shard(owner) == shard, "stable"
    assert shards_used == set(range(keys.FEED_SHARDS))


def test_a_tasks_log_shares_the_slot_of_its_shards_bounds() -> None:
    cluster = keys.CLUSTER
    for _ in range(200):
        task = str(uuid.uuid4())
        shard = cluster.log_shard(task)
        together = {
            cluster.task_log_stream(task),
            cluster.task_log_meta(task),
            cluster.task_logs_index(shard),
            cluster.task_logs_bytes(shard),
            cluster.task_log_prefix(shard) + task,
            cluster.task_meta_prefix(shard) + task,
        }
        assert len(together) == 4 and len({slot(k) for k in together}) == 1


def test_the_shards_spread_over_the_nodes_of_a_three_primary_cluster() -> None:
    ranges = slot_ranges(3)

    def node(key: str) -> int:
        return next(i for i, (low, high) in enumerate(ranges) if low <= slot(key) <= high)

    assert {node(keys.CLUSTER.feed_stream(s)) for s in range(keys.FEED_SHARDS)} == {0, 1, 2}
    assert {node(keys.CLUSTER.task_logs_index(s)) for s in range(keys.LOG_SHARDS)} == {0, 1, 2}
    assert len({slot(keys.CLUSTER.feed_stream(s)) for s in range(keys.FEED_SHARDS)}) == keys.FEED_SHARDS


def test_the_rate_window_and_its_sequence_share_a_slot() -> None:
    assert slot(keys.rate_window("sleep")) == slot(keys.rate_sequence("sleep"))


def test_redis_url_names_one_server_or_a_cluster() -> None:
    assert not RedisConfig("redis://u@h:6379/0").cluster
    cluster = load(RedisConfig, {"REDIS_URL": "redis+cluster://rtask-services@10.0.0.5:7000/0"})
    assert cluster.cluster and cluster.client_url == "redis://rtask-services@10.0.0.5:7000/0"
    tls = RedisConfig("rediss+cluster://u@h:7000")
    assert tls.cluster and tls.client_url == "rediss://u@h:7000"
    with pytest.raises(ConfigError, match="REDIS_URL"):
        load(RedisConfig, {"REDIS_URL": "valkey-cluster://h:7000"})


def _matches(pattern: str, key: str) -> bool:
    return fnmatchcase(key, pattern)
