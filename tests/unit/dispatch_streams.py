"""Dispatch streams of one kind on a database of the session's Valkey that no stack process reads, for the tests of
the priority levels and the shards."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis

from services.core.config import RedisConfig
from services.core.dispatch import DispatchEntry, ensure_dispatch_groups
from services.core.redis_client import create_redis
from tests.conftest import Stores

KIND = "sleep"


@asynccontextmanager
async def dispatch_redis(stores: Stores, database: int, shards: int = 1) -> AsyncIterator[aioredis.Redis]:
    """A client of `database` (emptied before and after) with KIND's consumer groups, for `shards` shards."""
    client = create_redis(RedisConfig(stores.redis_url.rsplit("/", 1)[0] + f"/{database}", dispatch_shards=shards))
    await client.flushdb()
    await ensure_dispatch_groups(client, [KIND])
    try:
        yield client
    finally:
        await client.flushdb()
        await client.aclose()


def entries(priority: int, n: int) -> list[DispatchEntry]:
    return [DispatchEntry(str(uuid.uuid4()), str(uuid.uuid4()), KIND, priority=priority) for _ in range(n)]
