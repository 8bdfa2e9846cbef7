"""Workers connected to this scheduler, and what goes down their open streams.

Everything a worker is to be told (pushed cancels, answers to its work requests, heartbeat acks) goes
into that worker's mailbox; the stream writes whatever has accumulated as one message, so a burst costs
one write, not one per item. A gateway that cancels a running task publishes a command on Redis; every
scheduler receives it and the one holding that worker's stream pushes it down at once (no polling).

One worker id has one stream: a new stream under an id replaces the old one, on this scheduler at once and
on the others through a `replace` message on the same channel, so commands never go to two streams.

A drain (OperatorService.DrainWorker) travels the same way: the scheduler holding the worker's stream refuses
its starts from then on, pushes the drain down, and confirms on the gateway's reply channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from resilienttask.worker.v1 import worker_pb2
from services.core import channels, commands, keys

log = logging.getLogger(__name__)

# A listen gives up after this long without a message and starts again (it never misses one meanwhile).
LISTEN_TIMEOUT_S = 30.0


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
        # Drains the worker of this stream until a deadline (epoch s): set by the stream's work processor.
        self.on_drain: Callable[[float], Awaitable[None]] | None = None

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

    def drain(self, deadline: float) -> None:
        """Tell the worker to drain, handing back what still runs at deadline (epoch s)."""
        self._pending.drain.grace.FromMilliseconds(max(0, int((deadline - time.time()) * 1000)))
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

    def drainer(self, worker_id: str) -> Callable[[float], Awaitable[None]] | None:
        """What drains worker_id's stream here; None when its stream is not on this scheduler."""
        mailbox = self._mailboxes.get(worker_id)
        return None if mailbox is None else mailbox.on_drain

    def send_stop(self, worker_id: str, task_id: str, fence: int, reason: commands.StopReason) -> bool:
        mailbox = self._mailboxes.get(worker_id)
        if mailbox is None:
            return False
        mailbox.cancel(cancel_command(task_id, fence, reason))
        return True


async def announce_stream(redis: aioredis.Redis, worker_id: str, mailbox: Mailbox) -> None:
    """Tell the other schedulers that worker_id has a new stream here, so they end any old one."""
    await channels.publish(redis, keys.COMMAND_CHANNEL, commands.replaced_message(worker_id, mailbox.stream_id))


async def relay_commands(redis: aioredis.Redis, workers: ConnectedWorkers) -> None:
    """Forward command-channel messages to the workers connected here; resubscribe after Redis failures."""
    drains: set[asyncio.Task[None]] = set()
    while True:
        try:
            async with channels.subscribed(redis, keys.COMMAND_CHANNEL) as subscription:
                while True:
                    data = await subscription.get(timeout_s=LISTEN_TIMEOUT_S)
                    if data is None:
                        continue
                    drain = _deliver(data, workers)
                    if drain is not None:  # confirmed off the relay loop: it waits for a batch being recorded
                        task = asyncio.create_task(_drain_and_confirm(redis, *drain))
                        drains.add(task)
                        task.add_done_callback(drains.discard)
        except (RedisError, OSError) as exc:
            log.warning("command relay lost Redis; resubscribing", extra={"error": repr(exc)})
            await asyncio.sleep(0.5)


# A drain to run here: (what drains the stream, its deadline in epoch s, the gateway's reply channel).
Drain = tuple[Callable[[float], Awaitable[None]], float, str]


def _deliver(data: object, workers: ConnectedWorkers) -> Drain | None:
    """Hand a command to the stream it names, if that stream is here; a drain is returned to be run."""
    command = commands.parse(data)
    if command is None:
        log.warning("malformed command ignored")
    elif command.HasField("replaced"):
        workers.replaced_elsewhere(command.replaced.worker_id, command.replaced.stream_id)
    elif command.HasField("drain"):
        drainer = workers.drainer(command.drain.worker_id)
        deadline = command.drain.deadline.ToNanoseconds() / 1e9
        if drainer is not None:
            return drainer, deadline, keys.drain_reply_channel(command.drain.reply)
    else:
        stop = command.stop
        workers.send_stop(stop.worker_id, stop.task.task_id, stop.task.fence, stop.reason)
    return None


async def _drain_and_confirm(
    redis: aioredis.Redis, drainer: Callable[[float], Awaitable[None]], deadline: float, reply: str
) -> None:
    await drainer(deadline)
    with contextlib.suppress(RedisError, OSError):  # unconfirmed: the worker's next heartbeat drains it anyway
        await channels.publish(redis, reply, "drained")
