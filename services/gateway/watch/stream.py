"""One WatchTasks call: snapshot or replay, then live events, heartbeats and worker-pool updates.

Nothing here polls: the call sleeps until the hub wakes it (with events, or because a heartbeat is due).
Whatever the call holds (its subscriber, its queue) is released in `finally`, so a client that cancels frees
it at once. Messages are written with the call's `write` as they are ready, already encoded: no generator
chain between the hub and gRPC, which matters when one event goes out to a thousand calls at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from resilienttask.v1 import scheduler_pb2
from services.core import task_store, worker_registry
from services.core.events import parse_stream_id
from services.core.task_model import row_to_summary
from services.gateway.watch import history, tokens, wire
from services.gateway.watch.hub import Hub, raise_if_cancelled
from services.gateway.watch.subscriber import Subscriber
from services.gateway.watch.wire import EncodedEvent

Message = scheduler_pb2.WatchTasksResponse
Write = Callable[[bytes], Awaitable[None]]
# How long a new watcher waits for the gateway's feed reader to (re)start before reading its history anyway.
FEED_READY_TIMEOUT_S = 2.0


class _Call:
    """Writes each message already encoded: events as the bytes the hub encoded once for all watchers."""

    def __init__(self, hub: Hub, owner_id: str, subscriber: Subscriber, accept_batches: bool, write: Write) -> None:
        self.hub = hub
        self.owner_id = owner_id
        self.subscriber = subscriber
        self._write = write
        # Events per message: several for a client that unpacks batches, else one.
        self.batch_events = hub.config.batch_events if accept_batches else 1
        # History position of the last message sent: what the client would resume from.
        self.sent = ""
        self.history_broken = False

    async def send(self, message: bytes) -> None:
        await self._write(message)
        self.subscriber.spoke()

    async def send_events(self, chunk: Sequence[EncodedEvent]) -> None:
        """Events ready together (oldest first, at most batch_events) as one message; then they are sent."""
        await self.send(wire.batch(chunk))
        self.sent = chunk[-1].entry_id
        self.hub.counts.events_delivered += len(chunk)

    async def snapshot(self) -> bytes:
        """The owner's recent tasks (as summaries, like events) and stats, as of a history position noted before
        reading them. Summaries keep a snapshot small (200 tasks with 64 KiB payloads would be 13 MiB, over
        gRPC's default 4 MiB message limit) and spare PostgreSQL reading the payloads and results.

        Events between that position and the database read are replayed after the snapshot; a client
        drops any whose version is not newer than what it holds.
        """
        self.subscriber.begin_sync()
        position = await history.last_position(self.hub.redis, self.owner_id)
        rows, counts, workers = await asyncio.gather(
            task_store.recent_summaries(self.hub.pool, self.owner_id, self.hub.config.snapshot_limit),
            self.hub.stats.current(self.owner_id),
            worker_registry.pool_view(self.hub.redis),
        )
        self.sent = position
        return Message(
            resume_token=tokens.encode(position),
            snapshot=scheduler_pb2.TaskSnapshot(
                tasks=[row_to_summary(row) for row in rows],
                stats=task_store.stats_from_counts(dict(counts)),
                workers=workers,
            ),
        ).SerializeToString()

    async def replay(self) -> None:
        """Every event after `sent`, read from history until the live queue can take over.

        Sets history_broken instead when the events after `sent` are gone.
        """
        page = self.hub.config.replay_page
        while True:
            self.subscriber.begin_sync()
            events = await history.read_after(self.hub.redis, self.owner_id, self.sent, page)
            if events is None:
                self.history_broken = True
                return
            ready = await self.hub.messages_for(self.owner_id, events)
            end = ready[-1].position if ready else parse_stream_id(self.sent)
            live = len(events) < page and self.subscriber.go_live(end)
            for start in range(0, len(ready), self.batch_events):
                await self.send_events(ready[start : start + self.batch_events])
            if live:
                return

    def heartbeat(self) -> bytes:
        return Message(resume_token=tokens.encode(self.sent), heartbeat=scheduler_pb2.Heartbeat()).SerializeToString()

    def workers(self) -> bytes:
        return Message(
            resume_token=tokens.encode(self.sent), workers=scheduler_pb2.WorkersEvent(workers=self.hub.workers)
        ).SerializeToString()

    async def run(self, resume_from: str | None) -> None:
        subscriber = self.subscriber
        want_snapshot = resume_from is None
        self.sent = resume_from or ""
        want_replay = not want_snapshot
        while True:
            if want_snapshot:
                await self.send(await self.snapshot())
                want_snapshot, want_replay = False, True
            if want_replay:
                want_replay = False
                await self.replay()
                # Checked after the store reads only (redis-py may swallow a cancellation), not per live
                # message: asking for the current task costs a getpid() system call on Python 3.11.
                raise_if_cancelled()
                if self.history_broken:
                    self.history_broken = False
                    want_snapshot = True
                continue
            await subscriber.wake.wait()
            subscriber.wake.clear()
            if subscriber.needs_snapshot:
                want_snapshot = True
                continue
            if subscriber.needs_replay:
                want_replay = True
                continue
            while subscriber.pending and subscriber.cursor is not None:
                # Whatever the reader queued since this call last ran was ready together: one message.
                count = min(self.batch_events, len(subscriber.pending))
                await self.send_events([subscriber.pending.popleft() for _ in range(count)])
            if subscriber.workers_changed and subscriber.cursor is not None:
                subscriber.workers_changed = False
                await self.send(self.workers())
            if subscriber.heartbeat_due:
                await self.send(self.heartbeat())


async def watch_tasks(hub: Hub, owner_id: str, request: scheduler_pb2.WatchTasksRequest, write: Write) -> None:
    """Write the encoded messages of one WatchTasks call for `owner_id` until it is cancelled.

    A malformed token fails before anything is held.
    """
    resume_from = tokens.decode(request.resume_token) if request.resume_token else None
    subscriber = hub.subscribe(owner_id)
    try:
        await hub.feed_ready(owner_id, FEED_READY_TIMEOUT_S)
        await _Call(hub, owner_id, subscriber, request.accept_batches, write).run(resume_from)
    finally:
        hub.unsubscribe(subscriber)
