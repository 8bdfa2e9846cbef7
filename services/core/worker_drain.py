"""Draining a worker on an operator's word (OperatorService.DrainWorker): the gateway's half.

The drain is marked in the worker registry first (it outlives the worker's stream, so a reconnect is drained
too, and every heartbeat of the worker checks it), then published on the command channel; the scheduler holding
the worker's stream refuses its starts from then on, pushes the drain down the stream and confirms
(services.scheduler.connections).
"""

from __future__ import annotations

import time
import uuid

import redis.asyncio as aioredis

from services.core import commands, keys


async def request_drain(redis: aioredis.Redis, worker_id: str, deadline: float, confirm_timeout_s: float) -> bool:
    """Mark worker_id draining and tell the scheduler holding its stream; True once that scheduler confirmed that
    it starts nothing more for the worker. False after confirm_timeout_s: the mark stays, and the worker's next
    heartbeat (or its next stream) drains it."""
    reply = uuid.uuid4().hex
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    try:
        await pubsub.subscribe(keys.drain_reply_channel(reply))
        await redis.publish(keys.COMMAND_CHANNEL, commands.drain_message(worker_id, deadline, reply))
        waited = time.monotonic() + confirm_timeout_s
        while (left := waited - time.monotonic()) > 0:
            if await pubsub.get_message(ignore_subscribe_messages=True, timeout=left) is not None:
                return True
        return False
    finally:
        await pubsub.aclose()
