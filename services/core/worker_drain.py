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

from services.core import channels, commands, keys


async def request_drain(redis: aioredis.Redis, worker_id: str, deadline: float, confirm_timeout_s: float) -> bool:
    """Mark worker_id draining and tell the scheduler holding its stream; True once that scheduler confirmed that
    it starts nothing more for the worker. False after confirm_timeout_s: the mark stays, and the worker's next
    heartbeat (or its next stream) drains it."""
    reply = uuid.uuid4().hex
    async with channels.subscribed(redis, keys.drain_reply_channel(reply)) as subscription:
        await channels.publish(redis, keys.COMMAND_CHANNEL, commands.drain_message(worker_id, deadline, reply))
        waited = time.monotonic() + confirm_timeout_s
        while (left := waited - time.monotonic()) > 0:
            if await subscription.get(timeout_s=left) is not None:
                return True
        return False
