"""The gateway's fan-out: one reader of the event feed and one listener of the worker pool for all watchers.

However many calls watch through this gateway, Redis sees one blocking XREAD on one key (plus one pubsub
subscription): the reader routes each entry to the subscribers of its owner, and entries of owners nobody
here watches are skipped without decoding their task. On a cluster the feed is split into shards (see
services.core.keys.KeyLayout): one reader per shard, each reading only while someone here watches an owner of
its shard.
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
from services.core import channels, keys, worker_registry
from services.core.events import (
    ORIGIN,
    StoredEvent,
    decode_feed_entry,
    feed_owner,
    feed_seq,
    parse_stream_id,
)
from services.core.redis_client import key_layout
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


class _FeedShard:
    """One feed stream and what its reader knows (one server: the only one)."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.seq: int | None = None
        # Owners watched here whose events this shard carries.
        self.owners = 0
        # The shard is read only while someone here watches one of its owners: set by the first subscriber.
        self.watched = asyncio.Event()
        # Set once the reader knows where it (re)starts; a new watcher reads its history only after that.
        self.positioned = asyncio.Event()


class Hub:
    def __init__(self, pool: asyncpg.Pool, redis: aioredis.Redis, config: WatchConfig) -> None:
        self.pool = pool
        self.redis = redis
        self.config = config
        self.layout = key_layout(redis)
        self.stats = StatsBook(pool, config.stats_timeout_ms / 1000)
        self.workers: list[task_pb2.Worker] = []
        self._workers_key: list[tuple[Any, ...]] | None = None
        self._by_owner: dict[str, set[Subscriber]] = defaultdict(set)
        self._shards = [_FeedShard(index) for index in range(self.layout.feed_shards)]
        # Events encoded so far: one per event read from the feed (not one per watcher), plus replays.
        self.events_encoded = 0
        # Open streams, events delivered, overflows: exported by services.gateway.watch_metrics.
        self.counts = WatchCounts()

    # -- subscribers ---------------------------------------------------------------------------------
    def _shard_of(self, owner_id: str) -> _FeedShard:
        return self._shards[self.layout.feed_shard(owner_id)]

    def subscribe(self, owner_id: str) -> Subscriber:
        subscriber = Subscriber(owner_id, self.config.queue_limit, self.counts)
        if owner_id not in self._by_owner:
            shard = self._shard_of(owner_id)
            shard.owners += 1
            shard.watched.set()
        self._by_owner[owner_id].add(subscriber)
        self.counts.streams_open += 1
        return subscriber

    async def feed_ready(self, owner_id: str, timeout_s: float) -> None:
        """Until the reader has a start position, so a history read that follows cannot miss an event.

        Events appended before that position are in the history the new watcher reads next; events after
        it reach the watcher through the feed. Given up after timeout_s (Redis unreachable): the watcher
        goes on, and the predecessor check of its next event still catches anything missed.
        """
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._shard_of(owner_id).positioned.wait(), timeout_s)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        watchers = self._by_owner.get(subscriber.owner_id)
        if watchers is None or subscriber not in watchers:
            return
        watchers.discard(subscriber)
        self.counts.streams_open -= 1
        if not watchers:
            del self._by_owner[subscriber.owner_id]
            self._shard_of(subscriber.owner_id).owners -= 1
            self.stats.forget(subscriber.owner_id)

    @property
    def reading_feed(self) -> bool:
        """Whether a feed reader is positioned and tailing (none is while nobody here watches)."""
        return any(shard.positioned.is_set() for shard in self._shards)

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

    async def _feed_start(self, shard: _FeedShard) -> str:
        newest: Any = await self.redis.xrevrange(self.layout.feed_stream(shard.index), "+", "-", count=1)
        if not newest:
            shard.seq = None
            return ORIGIN
        try:
            shard.seq = feed_seq(newest[0][1])
        except (KeyError, ValueError):
            shard.seq = None  # not one of ours: continuity is checked from the next entry on
        return str(newest[0][0].decode())

    async def read_feed(self) -> None:
        """Tail every feed shard (one server: the feed) while anyone watches one of its owners here."""
        async with asyncio.TaskGroup() as group:
            for shard in self._shards:
                group.create_task(self._read_shard(shard))

    async def _read_shard(self, shard: _FeedShard) -> None:
        """Tail one feed stream; a Redis outage pauses delivery, it does not end the loop.

        With no watcher the reader stops (a gateway without watchers spends nothing on the feed) and later
        starts again from the newest entry: what a new watcher needs from before then is in its history.
        """
        stream = self.layout.feed_stream(shard.index)
        position: str | None = None
        while True:
            raise_if_cancelled()
            if not shard.owners:
                position = None
                shard.positioned.clear()
                shard.watched.clear()
                await shard.watched.wait()
                continue
            try:
                if position is None:
                    position = await self._feed_start(shard)
                    shard.positioned.set()
                reply: Any = await self.redis.xread(
                    {stream: position},
                    count=self.config.feed_batch,
                    block=self.config.feed_block_ms,
                )
            except (RedisError, OSError) as exc:
                log.warning("event feed unreadable", extra={"error": repr(exc), "shard": shard.index})
                await asyncio.sleep(RETRY_DELAY_S)
                continue
            if not reply:
                continue
            entries = reply[0][1]
            position = entries[-1][0].decode()
            try:
                await self._route(shard, entries)
            except Exception:  # a bad entry or a bug must not stop delivery to every watcher here
                log.exception("event routing failed; every watcher replays its history")
                for subscriber in self._everyone():
                    subscriber.resync()

    async def _route(self, shard: _FeedShard, entries: Sequence[tuple[bytes, dict[bytes, bytes]]]) -> None:
        watched: dict[str, list[StoredEvent]] = defaultdict(list)
        lost = False
        for _, fields in entries:
            seq = feed_seq(fields)
            # Entries between two reads were trimmed (this reader fell far behind) or Redis lost its data (on a
            # cluster: a primary failed before its replica had them).
            lost = lost or (shard.seq is not None and seq != shard.seq + 1)
            shard.seq = seq
            owner = feed_owner(fields)
            if owner in self._by_owner:
                watched[owner].append(decode_feed_entry(fields))
        if lost:
            log.warning("event feed skipped entries; its watchers replay their history", extra={"shard": shard.index})
            for subscriber in self._everyone():
                if self.layout.feed_shard(subscriber.owner_id) == shard.index:
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
        async with channels.subscribed(self.redis, keys.WORKERS_EVENTS_CHANNEL) as subscription:
            await self.refresh_workers()
            while True:
                raise_if_cancelled()
                message = await subscription.get(timeout_s=self.config.workers_refresh_ms / 1000)
                if message is not None:
                    # A burst (a batch starting on many slots) becomes one update.
                    await asyncio.sleep(self.config.workers_coalesce_ms / 1000)
                    while await subscription.get(timeout_s=0) is not None:
                        pass
                await self.refresh_workers()

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
