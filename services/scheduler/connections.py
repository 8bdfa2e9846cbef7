"""Workers connected to this scheduler, and the commands that reach them over their open streams.

A gateway that cancels a running task publishes a command on Redis; every scheduler receives it and
the one holding that worker's Connect stream pushes it down at once (no polling).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from resilienttask.v1 import worker_pb2
from services.core import keys

log = logging.getLogger(__name__)


class ConnectedWorkers:
    """worker_id → queue of messages to send down that worker's stream."""

    def __init__(self) -> None:
        self._queues: dict[str, asyncio.Queue[worker_pb2.ConnectResponse]] = {}

    def attach(self, worker_id: str) -> asyncio.Queue[worker_pb2.ConnectResponse]:
        queue: asyncio.Queue[worker_pb2.ConnectResponse] = asyncio.Queue()
        self._queues[worker_id] = queue
        return queue

    def detach(self, worker_id: str, queue: asyncio.Queue[worker_pb2.ConnectResponse]) -> None:
        if self._queues.get(worker_id) is queue:
            del self._queues[worker_id]

    def __contains__(self, worker_id: str) -> bool:
        return worker_id in self._queues

    def send_stop(self, worker_id: str, task_id: str, fence: int, reason: str) -> bool:
        queue = self._queues.get(worker_id)
        if queue is None:
            return False
        command = worker_pb2.CancelCommand(task=worker_pb2.HeldTask(task_id=task_id, fence=fence), reason=reason)
        queue.put_nowait(worker_pb2.ConnectResponse(cancel=command))
        return True


async def relay_commands(redis: aioredis.Redis, workers: ConnectedWorkers) -> None:
    """Forward command-channel messages to the workers connected here; resubscribe after Redis failures."""
    while True:
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(keys.COMMAND_CHANNEL)
            async for message in pubsub.listen():
                _deliver(message.get("data"), workers)
        except (RedisError, OSError) as exc:
            log.warning("command relay lost Redis; resubscribing", extra={"error": repr(exc)})
            await asyncio.sleep(0.5)
        finally:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()


def _deliver(data: object, workers: ConnectedWorkers) -> None:
    if not isinstance(data, (bytes, str)):
        return
    try:
        command = json.loads(data)
        workers.send_stop(command["worker_id"], command["task_id"], int(command["fence"]), command["reason"])
    except (ValueError, KeyError, TypeError):
        log.warning("malformed command ignored")
