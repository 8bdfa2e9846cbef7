"""Workers connected to this scheduler, and what goes down their open streams.

Everything a worker is to be told (pushed cancels, answers to its work requests, heartbeat acks) goes
into that worker's mailbox; the stream writes whatever has accumulated as one message, so a burst costs
one write, not one per item. A gateway that cancels a running task publishes a command on Redis; every
scheduler receives it and the one holding that worker's stream pushes it down at once (no polling).

One worker id has one stream: a new stream under an id replaces the old one, on this scheduler at once and
on the others through a `replace` message on the same channel, so commands never go to two streams.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from resilienttask.worker.v1 import worker_pb2
from services.core import channels, keys
from services.scheduler.store import SUPERSEDED

log = logging.getLogger(__name__)

# The stop reasons of the command channel and the worker protocol's enum for them.
CANCELLED = "cancelled"
# A listen gives up after this long without a message and starts again (it never misses one meanwhile).
LISTEN_TIMEOUT_S = 30.0
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
        # Names this stream in `replace` messages, so a scheduler never closes the stream that replaced it.
        self.stream_id = uuid.uuid4().hex
        # Set when a newer stream of the same worker took over: this one ends with ABORTED.
        self.replaced = False

    def close(self) -> None:
        """The stream is ending: `next()` hands out what is left, then None."""
        self._closed = True
        self._ready.set()

    def replace(self) -> None:
        """A newer stream of the same worker took over: end this one."""
        self.replaced = True
        self.close()

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
        """A new stream of worker_id; the one it had here (if any) ends."""
        mailbox = Mailbox()
        previous = self._mailboxes.get(worker_id)
        self._mailboxes[worker_id] = mailbox
        if previous is not None:
            previous.replace()
        return mailbox

    def replaced_elsewhere(self, worker_id: str, stream_id: str) -> None:
        """Another scheduler took a new stream of worker_id: end ours, unless it is that very stream."""
        mailbox = self._mailboxes.get(worker_id)
        if mailbox is not None and mailbox.stream_id != stream_id:
            del self._mailboxes[worker_id]
            mailbox.replace()

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


async def announce_stream(redis: aioredis.Redis, worker_id: str, mailbox: Mailbox) -> None:
    """Tell the other schedulers that worker_id has a new stream here, so they end any old one."""
    message = {"replace": worker_id, "stream": mailbox.stream_id}
    await channels.publish(redis, keys.COMMAND_CHANNEL, json.dumps(message))


async def relay_commands(redis: aioredis.Redis, workers: ConnectedWorkers) -> None:
    """Forward command-channel messages to the workers connected here; resubscribe after Redis failures."""
    while True:
        try:
            async with channels.subscribed(redis, keys.COMMAND_CHANNEL) as subscription:
                while True:
                    data = await subscription.get(timeout_s=LISTEN_TIMEOUT_S)
                    if data is not None:
                        _deliver(data, workers)
        except (RedisError, OSError) as exc:
            log.warning("command relay lost Redis; resubscribing", extra={"error": repr(exc)})
            await asyncio.sleep(0.5)


def _deliver(data: object, workers: ConnectedWorkers) -> None:
    if not isinstance(data, (bytes, str)):
        return
    try:
        command = json.loads(data)
        if "replace" in command:
            workers.replaced_elsewhere(str(command["replace"]), str(command["stream"]))
            return
        workers.send_stop(command["worker_id"], command["task_id"], int(command["fence"]), command["reason"])
    except (ValueError, KeyError, TypeError):
        log.warning("malformed command ignored")
