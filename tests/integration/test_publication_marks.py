"""The gateway's publication marks: late, batched, and only for a task still queued on the marked dispatch."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as aioredis

from resilienttask.worker.v1 import worker_pb2
from services.core import outbox
from services.core.transitions import user as transitions
from services.scheduler import store
from tests.conftest import Stores
from tests.helpers import eventually
from tests.integration.test_transitions import database, new_user

__all__ = ["database"]  # the fixture, used by name


@pytest.fixture
async def redis(stores: Stores) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(stores.redis_url.rsplit("/", 1)[0] + "/6")
    await client.flushdb()
    try:
        yield client
    finally:
        await client.flushdb()
        await client.aclose()


async def test_marks_skip_started_and_requeued_tasks_and_land_for_queued_ones(
    database: str, redis: aioredis.Redis
) -> None:
    pool = await asyncpg.create_pool(database, min_size=1, max_size=4)
    assert pool is not None
    try:
        owner = await new_user(pool)
        rows = []
        for _ in range(3):
            spec = transitions.Submission("t", "sleep", {}, 0, 1000, 1, 3, str(uuid.uuid4()))
            (row,), _ = await transitions.submit(pool, owner, spec)
            await outbox.emit_and_dispatch(pool, redis, [row], [])
            rows.append(row)
        assert len(outbox._in_flight) == 1, "the three submissions share one mark statement"
        started, requeued, waiting = rows
        item = worker_pb2.StartItem(task_id=str(started["id"]), dispatch_id=str(started["dispatch_id"]), entry_id="e")
        assert (await store.start_batch(pool, "w", [item])).results[0].decision == worker_pb2.START_DECISION_RUN
        # As a failed attempt's requeue does: a new dispatch, still QUEUED.
        await pool.execute("UPDATE tasks SET dispatch_id = gen_random_uuid() WHERE id = $1", requeued["id"])
        before = {r["id"]: r for r in await pool.fetch("SELECT id, version, entry_id, published FROM tasks")}

        async def marked() -> bool:
            return bool(await pool.fetchval("SELECT published FROM tasks WHERE id = $1", waiting["id"]))

        await eventually(marked, message="the queued task is marked")
        after = {r["id"]: r for r in await pool.fetch("SELECT id, version, entry_id, published FROM tasks")}
        assert after[started["id"]] == before[started["id"]], "a started task is not marked"
        assert after[requeued["id"]] == before[requeued["id"]], "a requeued task keeps waiting for its new dispatch"
        assert after[waiting["id"]]["entry_id"].startswith("sleep:")
        assert after[waiting["id"]]["version"] == before[waiting["id"]]["version"], "not a change users see"
    finally:
        await pool.close()


async def test_marks_still_waiting_are_written_at_shutdown(database: str, redis: aioredis.Redis) -> None:
    pool = await asyncpg.create_pool(database, min_size=1, max_size=2)
    assert pool is not None
    try:
        owner = await new_user(pool)
        spec = transitions.Submission("t", "sleep", {}, 0, 1000, 1, 3, str(uuid.uuid4()))
        (row,), _ = await transitions.submit(pool, owner, spec)
        await outbox.emit_and_dispatch(pool, redis, [row], [])
        await outbox.flush_marks(pool)
        assert await pool.fetchval("SELECT published FROM tasks WHERE id = $1", row["id"])
        await asyncio.gather(*outbox._in_flight)  # the delayed writer finds its batch taken, and writes nothing
    finally:
        await pool.close()
