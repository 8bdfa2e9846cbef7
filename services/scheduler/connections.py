"""Workers connected to this scheduler, and what goes down their open streams.

Everything a worker is to be told (pushed cancels, answers to its work requests, heartbeat acks) goes
into that worker's mailbox; the stream writes whatever has accumulated as one message, so a burst costs
one write, not one per item. A gateway that cancels a running task publishes a command on Redis; every
scheduler receives it and the one holding that worker's stream pushes it down at once (no polling).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from resilienttask.worker.v1 import worker_pb2
from services.core import keys
from services.scheduler.store import SUPERSEDED

log = logging.getLogger(__name__)

# The stop reasons of the command channel and the worker protocol's enum for them.
CANCELLED = "cancelled"
STOP_REASONS = {CANCELLED: worker_pb2.STOP_REASON_CANCELLED, SUPERSEDED: worker_pb2.STOP_REASON_SUPERSEDED}


def cancel_command(task_id: str, fence: int, reason: str) -> worker_pb2.CancelCommand:
    return worker_pb2.CancelCommand(
        task=worker_pb2.HeldTask(task_id=task_id, fence=fence),
        reason=STOP_REASONS.get(reason, worker_pb2.STOP_REASON_CANCELLED),
    )


class Mailbox:
    """What is waiting to go down one worker's stream; `next()` takes all of it as one message."""

    def __init__(self) -> None:
        self._pending = worker_pb2.ConnectResponse()
        self._ready = asyncio.Event()
        self._closed = False

    def close(self) -> None:
        """The stream is ending: `next()` hands out what is left, then None."""
        self._closed = True
        self._ready.set()

    def cancel(self, command: worker_pb2.CancelCommand) -> None:
        self._pending.cancels.append(command)
        self._ready.set()

    def answer(self, response: worker_pb2.WorkResponse) -> None:
        self._pending.work.append(response)
        self._ready.set()

    def ack(self, sequence: int) -> None:
        self._pending.heartbeat_acks.add(sequence=sequence)
        self._ready.set()

    async def next(self) -> worker_pb2.ConnectResponse | None:
        await self._ready.wait()
        self._ready.clear()
        message, self._pending = self._pending, worker_pb2.ConnectResponse()
        if self._closed and message.ByteSize() == 0:
            self._ready.set()
            return None
        return message


class ConnectedWorkers:
    """worker_id → the mailbox of that worker's stream."""

    def __init__(self) -> None:
        self._mailboxes: dict[str, Mailbox] = {}

    def attach(self, worker_id: str) -> Mailbox:
        mailbox = Mailbox()
        self._mailboxes[worker_id] = mailbox
        return mailbox

    def detach(self, worker_id: str, mailbox: Mailbox) -> None:
        if self._mailboxes.get(worker_id) is mailbox:
            del self._mailboxes[worker_id]

    def __contains__(self, worker_id: str) -> bool:
        return worker_id in self._mailboxes

    def send_stop(self, worker_id: str, task_id: str, fence: int, reason: str) -> bool:
        mailbox = self._mailboxes.get(worker_id)
        if mailbox is None:
            return False
        mailbox.cancel(cancel_command(task_id, fence, reason))
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
