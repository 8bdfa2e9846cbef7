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
import contextlib
import logging
import uuid

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from resilienttask.worker.v1 import worker_pb2
from services.core import commands, keys

log = logging.getLogger(__name__)


def cancel_command(task_id: str, fence: int, reason: commands.StopReason) -> worker_pb2.CancelCommand:
    return worker_pb2.CancelCommand(task=worker_pb2.HeldTask(task_id=task_id, fence=fence), reason=reason)


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

    def send_stop(self, worker_id: str, task_id: str, fence: int, reason: commands.StopReason) -> bool:
        mailbox = self._mailboxes.get(worker_id)
        if mailbox is None:
            return False
        mailbox.cancel(cancel_command(task_id, fence, reason))
        return True


async def announce_stream(redis: aioredis.Redis, worker_id: str, mailbox: Mailbox) -> None:
    """Tell the other schedulers that worker_id has a new stream here, so they end any old one."""
    await redis.publish(keys.COMMAND_CHANNEL, commands.replaced_message(worker_id, mailbox.stream_id))


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
    command = commands.parse(data)
    if command is None:
        log.warning("malformed command ignored")
    elif command.HasField("replaced"):
        workers.replaced_elsewhere(command.replaced.worker_id, command.replaced.stream_id)
    else:
        stop = command.stop
        workers.send_stop(stop.worker_id, stop.task.task_id, stop.task.fence, stop.reason)
