"""The asyncio Redis client factory and a liveness probe."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.core.config import RedisConfig


def create_redis(config: RedisConfig) -> aioredis.Redis:
    """A pooled client; connections are opened lazily and re-opened after a server restart."""
    return aioredis.Redis.from_url(
        config.url,
        decode_responses=False,
        health_check_interval=5,
        socket_connect_timeout=2,
        retry_on_timeout=True,
    )


async def redis_reachable(client: aioredis.Redis) -> bool:
    """True when PING answers."""
    try:
        return bool(await client.ping())
    except (RedisError, OSError, TimeoutError):
        return False
