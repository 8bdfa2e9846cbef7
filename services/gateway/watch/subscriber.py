"""One watcher's place in the fan-out: a bounded queue of events, filled by the gateway's reader.

The reader offers each event of the watcher's owner; the watcher's own call takes them. An event is
queued only if it follows the last queued one (each event names its predecessor): anything else means
the watcher missed something, and its call replays the history from Redis instead. While the call
reads history (after connecting, after a gap) the reader queues nothing and only notes how far the
offers went, so the call knows whether its read was overtaken.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

from services.core.events import StreamId
from services.gateway.watch.wire import EncodedEvent


@dataclass
class WatchCounts:
    """What a gateway's watchers did, as plain integers: kept always (an addition each), exported when scraped."""

    streams_open: int = 0
    events_delivered: int = 0
    overflows: int = 0


class Subscriber:
    def __init__(self, owner_id: str, queue_limit: int, counts: WatchCounts | None = None) -> None:
        self.owner_id = owner_id
        self.queue_limit = queue_limit
        self.counts = counts or WatchCounts()
        self.pending: deque[EncodedEvent] = deque()
        # Position of the last queued event; None while the call reads history itself.
        self.cursor: StreamId | None = None
        # Newest position offered while the cursor was None.
        self.offered_while_syncing: StreamId | None = None
        # Set by the reader, cleared by the call when it acts on them.
        self.needs_snapshot = False  # the queue overflowed: events were dropped
        self.needs_replay = False  # an event did not follow the last one (a gap in what the reader saw)
        self.workers_changed = False
        # Heartbeats: whether the call sent anything since the hub's last tick, and whether it owes one.
        self.spoke_since_tick = False
        self.heartbeat_due = False
        self.wake = asyncio.Event()

    def offer(self, event: EncodedEvent, after: StreamId | None) -> None:
        """Called by the reader for each event of this owner, in history order."""
        if self.cursor is None:
            if self.offered_while_syncing is None or event.position > self.offered_while_syncing:
                self.offered_while_syncing = event.position
            return
        if event.position <= self.cursor:
            return  # already delivered by a history read
        if after != self.cursor:
            self._lose(snapshot=False, position=event.position)
        elif len(self.pending) >= self.queue_limit:
            self.counts.overflows += 1
            self._lose(snapshot=True, position=event.position)
        else:
            self.pending.append(event)
            self.cursor = event.position
            self.wake.set()

    def _lose(self, *, snapshot: bool, position: StreamId) -> None:
        """Drop the queue: memory stays bounded and the call starts over from Redis or a snapshot."""
        self.pending.clear()
        self.cursor = None
        self.offered_while_syncing = position
        if snapshot:
            self.needs_snapshot = True
        else:
            self.needs_replay = True
        self.wake.set()

    def resync(self) -> None:
        """The reader may have missed events of any owner: replay from history."""
        if self.cursor is not None:
            self._lose(snapshot=False, position=self.cursor)
        else:
            self.needs_replay = True
            self.wake.set()

    def begin_sync(self) -> None:
        """The call is about to read history: stop queueing."""
        self.pending.clear()
        self.cursor = None
        self.offered_while_syncing = None
        self.needs_replay = False
        self.needs_snapshot = False

    def go_live(self, position: StreamId) -> bool:
        """After a history read ending at `position`: queue from there, unless an offer went past it."""
        if self.offered_while_syncing is not None and self.offered_while_syncing > position:
            return False
        self.cursor = position
        return True

    def spoke(self) -> None:
        """The call sent a message: the stream is not quiet."""
        self.spoke_since_tick = True
        self.heartbeat_due = False

    def tick(self) -> None:
        """Called by the hub every half heartbeat interval: a call quiet for a whole tick owes a heartbeat."""
        if not self.spoke_since_tick:
            self.heartbeat_due = True
            self.wake.set()
        self.spoke_since_tick = False

    def notify_workers(self) -> None:
        self.workers_changed = True
        self.wake.set()
