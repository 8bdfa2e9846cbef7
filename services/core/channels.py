"""Publish/subscribe on one server or a cluster: the command channel and the worker pool's announcements.

On a cluster a plain PUBLISH is copied to every node over the cluster bus; sharded pub/sub (SPUBLISH and
SSUBSCRIBE, Redis 7+ and Valkey) sends a message only to the nodes serving its channel's slot, and redis-py's
cluster client follows the channel to the new primary after a failover. So a cluster uses sharded pub/sub,
one server the plain commands it always used (a server upgraded in place keeps working with old and new
processes side by side).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from services.core.redis_client import is_cluster


def queue_publish(pipe: Pipeline, channel: str, message: bytes | str) -> None:
    """Add a publication to a pipeline (either kind)."""
    if is_cluster(pipe):
        pipe.spublish(channel, message)
    else:
        pipe.publish(channel, message)


async def publish(redis: aioredis.Redis, channel: str, message: bytes | str) -> None:
    if is_cluster(redis):
        await redis.spublish(channel, message)
    else:
        await redis.publish(channel, message)


class Subscription:
    """One channel's messages: get() returns the next message's data, or None (nothing within timeout_s, or the
    confirmation of the subscription)."""

    def __init__(self, redis: aioredis.Redis, channel: str) -> None:
        self.channel = channel
        self._sharded = is_cluster(redis)
        self._pubsub: Any = redis.pubsub(ignore_subscribe_messages=True)

    async def open(self) -> None:
        if self._sharded:
            await self._pubsub.ssubscribe(self.channel)
        else:
            await self._pubsub.subscribe(self.channel)

    async def get(self, timeout_s: float) -> bytes | str | None:
        if self._sharded:
            message = await self._pubsub.get_sharded_message(ignore_subscribe_messages=True, timeout=timeout_s)
        else:
            message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout_s)
        if message is None:
            return None
        data = message.get("data")
        return data if isinstance(data, (bytes, str)) else None

    async def close(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._pubsub.aclose()


@contextlib.asynccontextmanager
async def subscribed(redis: aioredis.Redis, channel: str) -> AsyncIterator[Subscription]:
    """A subscription open for the block's duration, closed after it (also on errors)."""
    subscription = Subscription(redis, channel)
    try:
        await subscription.open()
        yield subscription
    finally:
        await subscription.close()
