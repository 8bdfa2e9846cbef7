"""The asyncio Redis client factory (one server or a cluster), the key layout of a client, and a liveness probe."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.core import keys
from services.core.config import RedisConfig


def create_redis(config: RedisConfig) -> aioredis.Redis:
    """A pooled client; connections are opened lazily and re-opened after a server restart.

    A pooled connection broken by a server restart fails on first use: one quick retry on a fresh
    connection hides that from callers, while a server that is really down still fails fast. The pool is
    bounded: a burst of calls (a thousand watchers reconnecting at once) waits for connections instead of
    opening one each, whose handshakes would then time out under the load they create.

    For a cluster URL (RedisConfig.cluster) the client is redis-py's RedisCluster, typed as the plain client
    whose commands it shares: callers that must tell them apart use key_layout() and services.core.channels.
    """
    layout = keys.KeyLayout(cluster=config.cluster, dispatch_shards=config.dispatch_shards)
    if config.cluster:
        client = _create_cluster(config)
        setattr(client, _LAYOUT_ATTRIBUTE, layout)
        return client
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
    # On the pool, which the client's pipelines share with it.
    setattr(pool, _LAYOUT_ATTRIBUTE, layout)
    return aioredis.Redis.from_pool(pool)


# Where create_redis() leaves the key layout of its configuration, for key_layout().
_LAYOUT_ATTRIBUTE = "rtask_key_layout"


# Of a cluster client's connections to each node, those kept for pub/sub (which borrows from the node's pool
# without going through the bound on commands below).
PUBSUB_RESERVE = 4


class _BoundedCluster(RedisCluster):
    """redis-py's cluster client, with callers beyond the connections it may open waiting for one (as on one
    server with the BlockingConnectionPool) rather than failing with MaxConnectionsError at once.

    Every command or pipeline in flight holds one of `max_connections - PUBSUB_RESERVE` places while it runs, and
    uses at most one connection of each node, so no node's pool is ever exhausted by them.
    """

    def __init__(self, *, pool_timeout_s: float, max_connections: int, **kwargs: Any) -> None:
        super().__init__(max_connections=max_connections, **kwargs)
        self._places = asyncio.Semaphore(max(1, max_connections - PUBSUB_RESERVE))
        self._pool_timeout_s = pool_timeout_s

    @contextlib.asynccontextmanager
    async def place(self) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self._pool_timeout_s):
                await self._places.acquire()
        except TimeoutError as exc:
            raise RedisConnectionError(f"no Redis connection free within {self._pool_timeout_s} s") from exc
        try:
            yield
        finally:
            self._places.release()

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self.place():
            return await super().execute_command(*args, **kwargs)

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> ClusterPipeline:
        if shard_hint:
            return super().pipeline(transaction, shard_hint)  # refused there, as it is by the base class
        return _BoundedPipeline(self, transaction)  # type: ignore[abstract]


class _BoundedPipeline(ClusterPipeline):
    """A pipeline of _BoundedCluster: it holds one place while it runs."""

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        client = cast("_BoundedCluster", self.cluster_client)
        async with client.place():
            return await super().execute(raise_on_error, allow_redirections)


def _create_cluster(config: RedisConfig) -> aioredis.Redis:
    """The cluster client: slots learnt from the node the URL names; a command to a primary that died is retried
    after a refresh of the slot map, so calls fail only while no node serves the slot (a failover's few seconds).

    No socket timeout, as on one server: the blocking reads (dispatch, feed) set their own bound, and a dead node
    on the same network resets the connection at once.
    """
    client = _BoundedCluster.from_url(
        config.client_url,
        pool_timeout_s=config.pool_timeout_s,
        max_connections=config.max_connections,
        decode_responses=False,
        health_check_interval=5,
        socket_connect_timeout=2,
        socket_timeout=None,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=4),
        password=config.password,
    )
    return cast("aioredis.Redis", client)


def is_cluster(client: object) -> bool:
    """Whether the client (or pipeline) talks to a cluster."""
    return isinstance(client, (RedisCluster, ClusterPipeline))


def key_layout(client: object) -> keys.KeyLayout:
    """The key names this client's (or pipeline's) server uses: those of the RedisConfig the client was created
    with (create_redis), else services.core.keys.CLUSTER on a cluster and SINGLE on one server."""
    if isinstance(client, ClusterPipeline):
        client = client.cluster_client
    holder = client if isinstance(client, RedisCluster) else getattr(client, "connection_pool", None)
    layout = getattr(holder, _LAYOUT_ATTRIBUTE, None)
    if isinstance(layout, keys.KeyLayout):
        return layout
    return keys.CLUSTER if is_cluster(client) else keys.SINGLE


async def redis_reachable(client: aioredis.Redis) -> bool:
    """True when PING answers."""
    try:
        return bool(await client.ping())
    except (RedisError, OSError, TimeoutError):
        return False
