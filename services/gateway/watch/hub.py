"""The gateway's fan-out: one reader of the event feed and one listener of the worker pool for all watchers.

However many calls watch through this gateway, Redis sees one blocking XREAD on one key (plus one pubsub
subscription): the reader routes each entry to the subscribers of its owner, and entries of owners nobody
here watches are skipped without decoding their task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from resilienttask.v1 import task_pb2
from services.core import keys, worker_registry
from services.core.events import (
    ORIGIN,
    StoredEvent,
    decode_feed_entry,
    feed_owner,
    feed_seq,
    parse_stream_id,
)
from services.gateway.watch import wire
from services.gateway.watch.config import WatchConfig
from services.gateway.watch.stats import StatsBook
from services.gateway.watch.subscriber import Subscriber, WatchCounts
from services.gateway.watch.wire import EncodedEvent

log = logging.getLogger(__name__)

# Pause after a failed read of Redis before trying again.
RETRY_DELAY_S = 0.5


def raise_if_cancelled() -> None:
    """Honour a cancellation that an awaited library call swallowed.

    redis-py sends each command under asyncio.wait_for, which on Python 3.11 returns normally when the
    cancellation arrives just as the send completes; the task still counts the request, so loops that
    would otherwise run on after their call (or the server) stopped check for it.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _after(event: StoredEvent) -> tuple[int, int] | None:
    try:
        return parse_stream_id(event.after)
    except ValueError:
        return None


class Hub:
    def __init__(self, pool: asyncpg.Pool, redis: aioredis.Redis, config: WatchConfig) -> None:
        self.pool = pool
        self.redis = redis
        self.config = config
        self.stats = StatsBook(pool, config.stats_timeout_ms / 1000)
        self.workers: list[task_pb2.Worker] = []
        self._workers_key: list[tuple[Any, ...]] | None = None
        self._by_owner: dict[str, set[Subscriber]] = defaultdict(set)
        self._feed_seq: int | None = None
        # The feed is read only while someone here watches: set by the first subscriber.
        self._watched = asyncio.Event()
        # Set once the reader knows where it (re)starts; a new watcher reads its history only after that.
        self._positioned = asyncio.Event()
        # Events encoded so far: one per event read from the feed (not one per watcher), plus replays.
        self.events_encoded = 0
        # Open streams, events delivered, overflows: exported by services.gateway.watch_metrics.
        self.counts = WatchCounts()

    # -- subscribers ---------------------------------------------------------------------------------
    def subscribe(self, owner_id: str) -> Subscriber:
        subscriber = Subscriber(owner_id, self.config.queue_limit, self.counts)
        self._by_owner[owner_id].add(subscriber)
        self.counts.streams_open += 1
        self._watched.set()
        return subscriber

    async def feed_ready(self, timeout_s: float) -> None:
        """Until the reader has a start position, so a history read that follows cannot miss an event.

        Events appended before that position are in the history the new watcher reads next; events after
        it reach the watcher through the feed. Given up after timeout_s (Redis unreachable): the watcher
        goes on, and the predecessor check of its next event still catches anything missed.
        """
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._positioned.wait(), timeout_s)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        watchers = self._by_owner.get(subscriber.owner_id)
        if watchers is None or subscriber not in watchers:
            return
        watchers.discard(subscriber)
        self.counts.streams_open -= 1
        if not watchers:
            del self._by_owner[subscriber.owner_id]
            self.stats.forget(subscriber.owner_id)

    @property
    def reading_feed(self) -> bool:
        """Whether the feed reader is positioned and tailing (it is not while nobody here watches)."""
        return self._positioned.is_set()

    @property
    def subscriber_count(self) -> int:
        return sum(len(watchers) for watchers in self._by_owner.values())

    def _everyone(self) -> list[Subscriber]:
        return [s for watchers in self._by_owner.values() for s in watchers]

    def encode(self, event: StoredEvent, stats: task_pb2.TaskStats | None) -> EncodedEvent:
        self.events_encoded += 1
        return wire.encode_event(event, stats)

    async def messages_for(self, owner_id: str, events: Sequence[StoredEvent]) -> list[EncodedEvent]:
        """Events of one owner ready to send, each with the stats after it."""
        if not events:
            return []
        stats = (await self.stats.along({owner_id: [e.change for e in events]}))[owner_id]
        return [self.encode(e, s) for e, s in zip(events, stats, strict=True)]

    # -- the feed ------------------------------------------------------------------------------------
    @property
    def loops(self) -> list[Callable[[], Coroutine[Any, Any, None]]]:
        """The gateway's background loops (started with the server, cancelled at stop)."""
        return [self.read_feed, self.follow_workers, self.tick_heartbeats]

    async def tick_heartbeats(self) -> None:
        """Every half heartbeat interval, have each call that sent nothing for a whole tick send a heartbeat.

        One timer for the gateway rather than a timeout armed and disarmed by every call for every message;
        a quiet stream still hears from the gateway at least once per heartbeat interval.
        """
        tick_s = self.config.heartbeat_ms / 2000
        while True:
            await asyncio.sleep(tick_s)
            for subscriber in self._everyone():
                subscriber.tick()

    async def _feed_start(self) -> str:
        newest: Any = await self.redis.xrevrange(keys.EVENTS_FEED_STREAM, "+", "-", count=1)
        if not newest:
            return ORIGIN
        try:
            self._feed_seq = feed_seq(newest[0][1])
        except (KeyError, ValueError):
            self._feed_seq = None  # not one of ours: continuity is checked from the next entry on
        return str(newest[0][0].decode())

    async def read_feed(self) -> None:
        """Tail the feed while anyone watches here; a Redis outage pauses delivery, it does not end the loop.

        With no watcher the reader stops (a gateway without watchers spends nothing on the feed) and later
        starts again from the newest entry: what a new watcher needs from before then is in its history.
        """
        position: str | None = None
        while True:
            raise_if_cancelled()
            if not self._by_owner:
                position = None
                self._positioned.clear()
                self._watched.clear()
                await self._watched.wait()
                continue
            try:
                if position is None:
                    position = await self._feed_start()
                    self._positioned.set()
                reply: Any = await self.redis.xread(
                    {keys.EVENTS_FEED_STREAM: position},
                    count=self.config.feed_batch,
                    block=self.config.feed_block_ms,
                )
            except (RedisError, OSError) as exc:
                log.warning("event feed unreadable", extra={"error": repr(exc)})
                await asyncio.sleep(RETRY_DELAY_S)
                continue
            if not reply:
                continue
            entries = reply[0][1]
            position = entries[-1][0].decode()
            try:
                await self._route(entries)
            except Exception:  # a bad entry or a bug must not stop delivery to every watcher here
                log.exception("event routing failed; every watcher replays its history")
                for subscriber in self._everyone():
                    subscriber.resync()

    async def _route(self, entries: Sequence[tuple[bytes, dict[bytes, bytes]]]) -> None:
        watched: dict[str, list[StoredEvent]] = defaultdict(list)
        lost = False
        for _, fields in entries:
            seq = feed_seq(fields)
            # Entries between two reads were trimmed (this reader fell far behind) or Redis lost its data.
            lost = lost or (self._feed_seq is not None and seq != self._feed_seq + 1)
            self._feed_seq = seq
            owner = feed_owner(fields)
            if owner in self._by_owner:
                watched[owner].append(decode_feed_entry(fields))
        if lost:
            log.warning("event feed skipped entries; every watcher replays its history")
            for subscriber in self._everyone():
                subscriber.resync()
        if not watched:
            return
        stats = await self.stats.along({owner: [e.change for e in events] for owner, events in watched.items()})
        for owner, events in watched.items():
            subscribers = list(self._by_owner.get(owner, ()))
            if not subscribers:
                continue
            # Encoded once here, whatever the number of watchers: each of their calls sends these bytes.
            ready = [(self.encode(e, s), _after(e)) for e, s in zip(events, stats[owner], strict=True)]
            for subscriber in subscribers:
                for queued, after in ready:
                    subscriber.offer(queued, after)

    # -- the worker pool -----------------------------------------------------------------------------
    async def follow_workers(self) -> None:
        """Keep `workers` current from the pool's announcements, coalesced, and re-read it periodically."""
        while True:
            try:
                await self._follow_workers_once()
            except (RedisError, OSError) as exc:
                log.warning("worker pool announcements unreadable", extra={"error": repr(exc)})
                await asyncio.sleep(RETRY_DELAY_S)
            except Exception:  # a malformed registry entry must not end pool updates for good
                log.exception("worker pool unreadable")
                await asyncio.sleep(RETRY_DELAY_S)

    async def _follow_workers_once(self) -> None:
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(keys.WORKERS_EVENTS_CHANNEL)
            await self.refresh_workers()
            while True:
                raise_if_cancelled()
                message = await pubsub.get_message(timeout=self.config.workers_refresh_ms / 1000)
                if message is not None:
                    # A burst (a batch starting on many slots) becomes one update.
                    await asyncio.sleep(self.config.workers_coalesce_ms / 1000)
                    while await pubsub.get_message(timeout=0) is not None:
                        pass
                await self.refresh_workers()
        finally:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()

    async def refresh_workers(self) -> None:
        live = await worker_registry.pool_view(self.redis)
        key = [(w.id, w.slots, w.busy, tuple(sorted(w.kinds)), w.draining) for w in live]
        if key == self._workers_key:
            return
        first = self._workers_key is None
        self._workers_key = key
        self.workers = live
        if not first:
            for subscriber in self._everyone():
                subscriber.notify_workers()
