"""The asyncio Redis client factory and a liveness probe."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.core.config import RedisConfig


def create_redis(config: RedisConfig) -> aioredis.Redis:
    """A pooled client; connections are opened lazily and re-opened after a server restart.

    A pooled connection broken by a server restart fails on first use: one quick retry on a fresh
    connection hides that from callers, while a server that is really down still fails fast. The pool is
    bounded: a burst of calls (a thousand watchers reconnecting at once) waits for connections instead of
    opening one each, whose handshakes would then time out under the load they create.
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        config.url,
        max_connections=config.max_connections,
        timeout=config.pool_timeout_s,
        decode_responses=False,
        health_check_interval=5,
        socket_connect_timeout=2,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=2),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        # Given apart from the URL (from a file); a URL's own password, when it has one, wins.
        password=config.password,
    )
    return aioredis.Redis.from_pool(pool)


async def redis_reachable(client: aioredis.Redis) -> bool:
    """True when PING answers."""
    try:
        return bool(await client.ping())
    except (RedisError, OSError, TimeoutError):
        return False
