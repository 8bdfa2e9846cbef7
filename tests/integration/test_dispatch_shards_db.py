"""RTASK_DISPATCH_SHARDS lowered: tasks whose entries sit in a shard no worker reads any more are found by the
lost-entry sweep and published again into the shards that remain; those still readable are left alone."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as aioredis

from services.core import outbox
from services.core.config import RedisConfig
from services.core.dispatch import parse_ref
from services.core.redis_client import create_redis
from services.core.transitions import user as transitions
from services.scheduler import sweepers
from tests.conftest import Stores
from tests.integration.test_transitions import database, new_user

__all__ = ["database"]  # the fixture, used by name

DB = "/13"


@pytest.fixture
async def redis(stores: Stores) -> AsyncIterator[tuple[aioredis.Redis, aioredis.Redis]]:
    """Database 13 of the session's Valkey through clients with 3 shards and with 1."""
    url = stores.redis_url.rsplit("/", 1)[0] + DB
    three, one = create_redis(RedisConfig(url, dispatch_shards=3)), create_redis(RedisConfig(url))
    await three.flushdb()
    try:
        yield three, one
    finally:
        await three.flushdb()
        await three.aclose()
        await one.aclose()


async def test_entries_of_shards_dropped_are_published_again(
    database: str, redis: tuple[aioredis.Redis, aioredis.Redis]
) -> None:
    three, one = redis
    pool = await asyncpg.create_pool(database, min_size=1, max_size=4)
    assert pool is not None
    try:
        owner = await new_user(pool)
        spec = transitions.Submission("t", "sleep", {}, 0, 1000, 12, 3, str(uuid.uuid4()))
        rows, _ = await transitions.submit(pool, owner, spec)
        assert await outbox.dispatch_rows(pool, three, rows)
        refs = {r["id"]: r["entry_id"] for r in await pool.fetch("SELECT id, entry_id FROM tasks")}
        stranded = {task for task, ref in refs.items() if parse_ref(ref)[3] > 0}
        assert stranded and len(stranded) < len(refs), f"12 tasks over 3 shards: {refs}"
        # Published "long ago", so the sweep looks at every one of them.
        await pool.execute("UPDATE tasks SET published_at = now() - interval '1 hour'")
        assert await sweepers.republish_lost(pool, one, age_s=60) == len(stranded)
        after = {r["id"]: r["entry_id"] for r in await pool.fetch("SELECT id, entry_id FROM tasks")}
        assert all(parse_ref(ref)[3] == 0 for ref in after.values()), "every entry in the shard that remains"
        assert {task for task in refs if after[task] != refs[task]} == stranded, "the readable ones left alone"
    finally:
        await pool.close()
