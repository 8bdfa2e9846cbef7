"""One busy kind spread over a cluster's nodes (RTASK_DISPATCH_SHARDS): a burst of one kind lands in every shard
of the kind's dispatch streams, the shards served by different primaries, and every task still runs and ends
exactly once, as the handlers record their own runs.

Runs in `make pytest-cluster` (--redis-cluster --dispatch-shards 3); skipped on an unsharded session.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from resilienttask import AsyncClient, TaskStatus
from services.core.redis_client import key_layout
from services.core.task_model import TERMINAL
from services.stack.stack import Stack
from tests.conftest import Stores, admin_redis, unique_email
from tests.integration.gated_handler import RECORDED_KIND, runs

BURST = 50


@pytest.fixture
def sharded(stores: Stores) -> None:
    if stores.dispatch_shards < 2:
        pytest.skip("the session's kinds are not sharded (--dispatch-shards)")


async def _entries_added(redis: Any, streams: list[str]) -> list[int]:
    """How many entries each stream has ever had (XINFO STREAM's entries-added: entries are deleted once run)."""
    added = []
    for stream in streams:
        info = await redis.xinfo_stream(stream)
        added.append(int(info["entries-added"]))
    return added


async def test_a_burst_of_one_kind_spreads_over_the_shards_on_different_nodes_and_ends_once(
    sharded: None, stack: Stack, stores: Stores, tmp_path: Path
) -> None:
    redis = admin_redis(stores)
    try:
        layout = key_layout(redis)
        assert layout.dispatch_shards == stores.dispatch_shards
        streams = [layout.dispatch_stream(RECORDED_KIND, shard=s) for s in range(stores.dispatch_shards)]
        log = tmp_path / "runs.log"
        async with AsyncClient(stack.edge_address) as client:
            await client.signup(unique_email("shards"), "correct horse battery")
            # The workers created the kind's streams and groups when they started.
            before = await _entries_added(redis, streams)
            if stores.cluster is not None:  # the slot map is known now
                nodes = {redis.get_node_from_key(stream).name for stream in streams}  # type: ignore[attr-defined]
                assert len(nodes) == len(streams), f"one primary per shard: {nodes}"
            submitted = await client.submit(
                "burst", kind=RECORDED_KIND, payload={"log": str(log), "sleep_s": 0.05}, replicas=BURST
            )
            done = await client.wait(submitted, timeout=120)
        added = [after - first for after, first in zip(await _entries_added(redis, streams), before, strict=True)]
    finally:
        await redis.aclose()
    assert sum(added) == BURST and all(added), f"entries per shard: {added}"
    assert {t.status for t in done} == {TaskStatus.SUCCEEDED}, Counter(t.status for t in done)
    ids = {t.id for t in submitted}
    recorded = runs(log)
    starts = Counter(task for what, task, _, _ in recorded if what == "start")
    ends = Counter(task for what, task, _, _ in recorded if what == "end")
    assert set(starts) == set(ends) == ids, "no task lost"
    assert set(starts.values()) == set(ends.values()) == {1}, "none ran twice"
    conn = await asyncpg.connect(stores.database_url)
    try:
        rows = await conn.fetch(
            "SELECT task_id FROM task_history WHERE task_id = ANY($1::uuid[]) AND to_status = ANY($2::int[])",
            sorted(ids),
            sorted(TERMINAL),
        )
    finally:
        await conn.close()
    endings = Counter(str(r["task_id"]) for r in rows)
    assert set(endings) == ids and set(endings.values()) == {1}, "every task ended exactly once"
