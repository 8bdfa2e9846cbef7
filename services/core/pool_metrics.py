"""Connection-pool use of one process (PostgreSQL and Redis), read when scraped: idle, in use, and the cap."""

from __future__ import annotations

import asyncpg
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from services.core.metrics import PREFIX, CallbackCollector, Metrics, Samples


def _database(pool: asyncpg.Pool) -> Samples:
    size, idle = pool.get_size(), pool.get_idle_size()
    return [(("in_use",), size - idle), (("idle",), idle), (("max",), pool.get_max_size())]


def _redis(client: aioredis.Redis) -> Samples:
    if isinstance(client, RedisCluster):
        return _redis_cluster(client)
    pool = client.connection_pool
    # redis-py keeps no public count; these two containers are what its own pool accounting reads.
    idle = len(getattr(pool, "_available_connections", ()))
    in_use = len(getattr(pool, "_in_use_connections", ()))
    return [(("in_use",), in_use), (("idle",), idle), (("max",), pool.max_connections)]


def _redis_cluster(client: RedisCluster) -> Samples:
    """A cluster client's connections over every node it knows; max is the cap of each node's pool, which the
    client's callers never exceed (services.core.redis_client)."""
    nodes = client.get_nodes()
    # As above: the node's own containers (every connection it opened, and those free).
    opened = sum(len(getattr(node, "_connections", ())) for node in nodes)
    idle = sum(len(getattr(node, "_free", ())) for node in nodes)
    cap = max((node.max_connections for node in nodes), default=0)
    return [(("in_use",), opened - idle), (("idle",), idle), (("max",), cap)]


def register_pools(
    metrics: Metrics, *, database: asyncpg.Pool | None = None, redis: aioredis.Redis | None = None
) -> None:
    """Export the pools this process holds (a worker holds no PostgreSQL pool)."""
    if database is not None:
        metrics.register(
            CallbackCollector(
                f"{PREFIX}_db_pool_connections",
                "PostgreSQL connections of this process by state (max: the pool's cap)",
                ["state"],
                lambda: _database(database),
            )
        )
    if redis is not None:
        metrics.register(
            CallbackCollector(
                f"{PREFIX}_redis_pool_connections",
                "Redis connections of this process by state (max: the pool's cap)",
                ["state"],
                lambda: _redis(redis),
            )
        )
