"""The worker's side of the dispatch streams: read, reclaim, refresh and acknowledge entries.

The worker consumes the streams of every kind it serves, one per priority level. Entries are named by
their reference (see services.core.dispatch), unique across streams. Every call is one round trip (pipelined
where it touches several entries or streams), a read included: its ordered reads of the levels (below) run inside
Valkey, in the dispatch library's function (services.core.dispatch_functions), which the operator loads. Where it
is not loaded (an upgrade whose operator has not run the init yet), the worker does the same reads one command
per lane, says so once, and tries the function again every FUNCTION_RETRY_S.

Priority: a read takes the highest level first and goes down a level only while it has slots left, so
under saturation urgent work starts first. Weighted so that no level starves: every AGING_EVERY_READS-th read
takes one lower level first (the levels below the top take turns), so a level with work waiting gets the
first pick at least once every AGING_EVERY_READS x 4 reads of each worker, however much urgent work arrives.

Lanes: each level has a share lane and a surplus lane (work let through beyond its owner's fair cap while no
other owner competed, docs/fair-sharing.md). A read takes a level's share lane before its surplus lane, and both
before the next level down: priority first, then the share lane. So that a surplus lane does not starve while
other owners keep its level's share lane busy, one read in AGING_EVERY_READS (half-way between the aged reads
of the levels) takes each level's surplus lane first. Everything else (reclaim, refresh, acknowledge, release,
owned) covers both lanes alike. The worker computes each read's order of lanes (_read_plan); the function only
follows it.

A kind may be split into shards (RTASK_DISPATCH_SHARDS), each with its own five streams: the worker reads,
reclaims and refreshes every shard of its kinds alike, and acknowledges an entry on the stream its reference
names. On one server, priority holds within the worker's view of all shards: each level is read from every shard
before the next level down (one function call covers them all).

On a cluster a command, and a function call, may only name keys of one slot. A shard's ten streams share one
(services.core.keys), so a read is one function call per kind and shard, pipelined (one round trip per node),
each taking its own streams in the read's order up to the shard's share of the free slots; priority then holds
within each shard, and across shards as far as their work is alike (a task's shard is a hash of its id). The
blocking read is one command per kind and shard, left waiting between calls of read(): each one stays pending
until it has entries (or its block time ends), and whatever it brought is taken by the next call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from services.core import keys
from services.core.dispatch import DispatchEntry, entry_ref, parse_entry, split_ref
from services.core.dispatch_functions import READ_FUNCTION, is_unavailable, read_reply_pairs
from services.core.redis_client import key_layout

log = logging.getLogger(__name__)

# XAUTOCLAIM calls per stream and reclaim pass: each scans at most 10 * COUNT pending entries, so a pass is
# bounded.
MAX_RECLAIM_CALLS = 4
ZERO_ID = "0-0"
# One read in this many gives a lower priority level the first pick (see the module's docstring).
AGING_EVERY_READS = 8
# How long a worker that found the read function missing reads lane by lane before it tries the function again.
FUNCTION_RETRY_S = 30.0


class _FunctionState:
    """Whether the read function may be called: yes until a call finds it missing (services.core.dispatch_functions
    is_unavailable), then again every FUNCTION_RETRY_S, so that a library loaded later is used without a restart.
    Each change is logged once, not each read."""

    def __init__(self, enabled: bool) -> None:
        self._enabled = enabled
        self._missing_at: float | None = None

    def usable(self) -> bool:
        if not self._enabled:
            return False
        return self._missing_at is None or time.monotonic() - self._missing_at >= FUNCTION_RETRY_S

    def unavailable(self, error: BaseException) -> None:
        if self._missing_at is None:
            log.warning(
                "the dispatch read function is not available: reading lane by lane, one round trip per lane, until "
                "the operator loads it (rtask-redis-init --load-functions, docs/fair-sharing.md)",
                extra={"function": READ_FUNCTION, "error": str(error)},
            )
        self._missing_at = time.monotonic()

    def available(self) -> None:
        if self._missing_at is not None:
            log.info(
                "the dispatch read function is available: one round trip per read", extra={"function": READ_FUNCTION}
            )
            self._missing_at = None


@dataclass(frozen=True)
class Delivery:
    """A stream entry handed to this worker, by XREADGROUP or XAUTOCLAIM; entry_id is its reference."""

    entry_id: str
    entry: DispatchEntry
    # Taken over from another consumer by XAUTOCLAIM (its time in the stream was that consumer's, not a wait).
    reclaimed: bool = False


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _by_stream(refs: Iterable[str], layout: keys.KeyLayout) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = defaultdict(list)
    for ref in refs:
        stream, entry_id = split_ref(ref, layout)
        grouped[stream].append(entry_id)
    return grouped


def _flatten(reply: Any) -> list[tuple[str, Any]]:
    """(stream, entry) pairs of an XREADGROUP reply."""
    return [(_text(stream), entry) for stream, entries in reply or [] for entry in entries]


class DispatchConsumer:
    """One consumer (this worker) of the dispatch group of every kind it serves."""

    def __init__(
        self, redis: aioredis.Redis, consumer: str, kinds: Iterable[str], *, read_function: bool = True
    ) -> None:
        """read_function False: every read lane by lane, never the library's function (for comparing the two)."""
        self.redis = redis
        self.consumer = consumer
        self.kinds = sorted(set(kinds))
        self.layout = key_layout(redis)
        # (kind, shard) of every shard of every kind: on a cluster, one slot each.
        self._shards = [(kind, shard) for kind in self.kinds for shard in range(self.layout.dispatch_shards)]
        # stream -> (kind, priority, shard, surplus lane), the most urgent level first, its share lane first.
        self._lane_of = {
            self.layout.dispatch_stream(kind, priority, shard, surplus): (kind, priority, shard, surplus)
            for priority in keys.PRIORITIES
            for surplus in (False, True)
            for kind, shard in self._shards
        }
        # Each level's streams, share lane, then surplus lane.
        self._streams_at = {
            p: [
                [self.layout.dispatch_stream(kind, p, shard, surplus) for kind, shard in self._shards]
                for surplus in (False, True)
            ]
            for p in keys.PRIORITIES
        }
        # On a cluster: the blocking read of each kind's shard still waiting for entries (see the module's docstring).
        self._waiting: dict[tuple[str, int], asyncio.Task[Any]] = {}
        # Where the next XAUTOCLAIM pass continues in each stream, so passes walk every pending list.
        self._reclaim_cursor = dict.fromkeys(self._lane_of, ZERO_ID)
        self._reads = 0
        self._function = _FunctionState(read_function)

    def _levels(self) -> list[int]:
        """The order in which this read takes the priority levels: highest first, except every
        AGING_EVERY_READS-th read, where one lower level (taking turns) goes first."""
        self._reads += 1
        levels = list(keys.PRIORITIES)
        turn, rest = divmod(self._reads, AGING_EVERY_READS)
        if rest == 0:
            lower = levels[1:]
            first = lower[turn % len(lower)]
            levels.remove(first)
            levels.insert(0, first)
        return levels

    async def read(self, count: int, block_ms: int) -> list[Delivery]:
        """New entries for this consumer, the most urgent first (at most count per stream: a caller wanting count
        keeps the first count), waiting up to block_ms for the first.

        The levels are read in priority order without blocking, each only while slots are left; when all are
        empty, one read blocks on every stream. A batch lands in its stream in one command
        (services.core.dispatch), so a blocked read wakes with all of it: a 50-replica submission goes to the
        scheduler in one work request, in one round trip.
        """
        if self.layout.cluster:
            # The reads of several slots end in any order: the most urgent first, for a caller keeping only some.
            read = await self._read_cluster(count, block_ms)
            return await self._accept(sorted(read, key=lambda pair: self._read_order(pair[0])))
        raw = await self._read_levels(count, [])
        if not raw:
            reply = await self.redis.xreadgroup(
                keys.DISPATCH_GROUP,
                self.consumer,
                dict.fromkeys(self._lane_of, ">"),
                count=self._per_shard(count),
                block=block_ms,
            )
            raw = _flatten(reply)
        return await self._accept(raw)

    def _read_order(self, stream: str) -> tuple[int, bool]:
        """Most urgent level first, its share lane before its surplus lane."""
        _, priority, _, surplus = self._lane_of[stream]
        return -priority, surplus

    def _per_shard(self, count: int) -> int:
        """What one stream command may bring of a kind's `count`: its share over the kind's shards (rounded up), so
        a read of every shard brings about count, not count from each (the caller hands back any surplus)."""
        return -(-count // self.layout.dispatch_shards)

    def _read_plan(self) -> list[list[str]]:
        """This read's lanes in order: the levels as _levels() orders them, each level's share lane then its surplus
        lane (the other way round on the surplus lanes' turn). A lane is a level's streams of every kind and shard,
        in the order of self._shards."""
        levels = self._levels()
        surplus_first = self._reads % AGING_EVERY_READS == AGING_EVERY_READS // 2
        lanes: list[list[str]] = []
        for level in levels:
            share, surplus = self._streams_at[level]
            lanes += [surplus, share] if surplus_first else [share, surplus]
        return lanes

    async def _read_levels(self, count: int, raw: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
        """The non-blocking reads, lane by lane in the order of _read_plan() while slots are left, in one round trip:
        the library's function does them inside Valkey (services.core.dispatch_functions), on a cluster one call
        per kind and shard, pipelined. Where the function cannot be run, the same reads one command per lane."""
        lanes = self._read_plan()
        wanted = count - len(raw)
        if wanted <= 0:
            return raw
        if self._function.usable():
            if self.layout.cluster:
                return raw + await self._call_function_per_slot(lanes, wanted)
            try:
                return raw + await self._call_function(lanes, wanted, self.layout.dispatch_shards)
            except ResponseError as exc:
                if not is_unavailable(exc):
                    raise
                self._function.unavailable(exc)
        return await self._read_lanes(lanes, count, raw, self.layout.dispatch_shards)

    async def _call_function(self, lanes: list[list[str]], count: int, divisor: int) -> list[tuple[str, Any]]:
        """One FCALL doing the reads of _read_lanes(lanes, count, divisor), all lanes of one slot."""
        streams = [stream for lane in lanes for stream in lane]
        reply = await self.redis.fcall(
            READ_FUNCTION, len(streams), *streams, *self._function_args(lanes, count, divisor)
        )
        self._function.available()
        return read_reply_pairs(reply)

    def _function_args(self, lanes: list[list[str]], count: int, divisor: int) -> list[Any]:
        return [keys.DISPATCH_GROUP, self.consumer, count, divisor, len(lanes[0])]

    async def _call_function_per_slot(self, lanes: list[list[str]], wanted: int) -> list[tuple[str, Any]]:
        """On a cluster: one FCALL per kind and shard (one slot each), pipelined, each taking its own streams in the
        read's order up to the shard's share of what is wanted (as each stream of a lane is asked for its share).
        While fewer than wanted came, the slots that gave all they were asked for (they may hold more) are asked
        again for the rest, shared between them: one round trip while the shards are even.

        A slot whose server has no function is read lane by lane; an error of another is raised only when nothing
        was read (the entries taken elsewhere would otherwise wait in this consumer's pending list until
        reclaimed)."""
        slot_lanes = [[[lane[i]] for lane in lanes] for i in range(len(self._shards))]
        asking, per_slot = list(range(len(slot_lanes))), self._per_shard(wanted)
        raw: list[tuple[str, Any]] = []
        error: BaseException | None = None
        while asking:
            async with self.redis.pipeline(transaction=False) as pipe:
                for i in asking:
                    streams = [lane[0] for lane in slot_lanes[i]]
                    pipe.fcall(READ_FUNCTION, len(streams), *streams, *self._function_args(slot_lanes[i], per_slot, 1))
                replies = await pipe.execute(raise_on_error=False)
            full: list[int] = []
            for i, reply in zip(asking, replies, strict=True):
                if not isinstance(reply, BaseException):
                    self._function.available()
                    found = read_reply_pairs(reply)
                elif isinstance(reply, ResponseError) and is_unavailable(reply):
                    self._function.unavailable(reply)
                    try:
                        found = await self._read_lanes(slot_lanes[i], per_slot, [], 1)
                    except (RedisError, OSError) as exc:  # as any other slot's error: what was read is kept
                        error = error or exc
                        continue
                else:
                    error = error or reply
                    continue
                raw += found
                if len(found) >= per_slot:
                    full.append(i)
            remaining = wanted - len(raw)
            if remaining <= 0 or not full:
                break
            asking, per_slot = full, -(-remaining // len(full))
        if error is not None and not raw:
            raise error
        return raw

    async def _read_lanes(
        self, lanes: list[list[str]], count: int, raw: list[tuple[str, Any]], divisor: int
    ) -> list[tuple[str, Any]]:
        """The reads of the library's function, one command (on a cluster one pipeline) per lane: the fallback
        where the function is not loaded. A lane is read again while one of its streams gave all it was asked for
        (each is asked for ceil(wanted / divisor): its share), so no lower lane is read while a higher one still
        holds entries."""
        for lane in lanes:
            while (wanted := count - len(raw)) > 0:
                per_stream = -(-wanted // divisor)
                found = await self._read_once(lane, per_stream)
                raw += [pair for pairs in found for pair in pairs]
                if all(len(pairs) < per_stream for pairs in found):
                    break
            if count - len(raw) <= 0:
                return raw
        return raw

    async def _read_once(self, lane: list[str], per_stream: int) -> list[list[tuple[str, Any]]]:
        """One non-blocking read of the streams of one lane: what each stream gave."""
        if self.layout.cluster:  # one command per slot
            async with self.redis.pipeline(transaction=False) as pipe:
                for stream in lane:
                    pipe.xreadgroup(keys.DISPATCH_GROUP, self.consumer, {stream: ">"}, count=per_stream)
                replies = await pipe.execute()
            return [_flatten(reply) for reply in replies]
        streams: Any = dict.fromkeys(lane, ">")
        reply: Any = await self.redis.xreadgroup(keys.DISPATCH_GROUP, self.consumer, streams, count=per_stream)
        return [[(_text(stream), entry) for entry in entries] for stream, entries in reply or []]

    async def _read_cluster(self, count: int, block_ms: int) -> list[tuple[str, Any]]:
        """read() on a cluster: the same order of levels, one command per kind and shard (one slot each)."""
        raw = await self._read_levels(count, self._collect_waiting())
        if raw:
            return raw
        for kind, shard in self._shards:
            if (kind, shard) not in self._waiting:
                streams: Any = {
                    self.layout.dispatch_stream(kind, p, shard, surplus): ">"
                    for p in keys.PRIORITIES
                    for surplus in (False, True)
                }
                read = self.redis.xreadgroup(
                    keys.DISPATCH_GROUP, self.consumer, streams, count=self._per_shard(count), block=block_ms
                )
                self._waiting[kind, shard] = asyncio.ensure_future(read)
        await asyncio.wait(self._waiting.values(), return_when=asyncio.FIRST_COMPLETED)
        return self._collect_waiting()

    def waiting_reads(self) -> list[asyncio.Task[Any]]:
        """The blocking reads still out (on a cluster), for a caller that waits for them without reading again."""
        return list(self._waiting.values())

    async def collect(self) -> list[Delivery]:
        """What the blocking reads that ended brought, without reading again."""
        return await self._accept(self._collect_waiting())

    def _collect_waiting(self) -> list[tuple[str, Any]]:
        """The entries of the blocking reads that ended; the first error among them is raised after all are
        taken (their entries would otherwise sit in this consumer's pending list until reclaimed)."""
        raw: list[tuple[str, Any]] = []
        error: BaseException | None = None
        for lane, read in list(self._waiting.items()):
            if not read.done():
                continue
            del self._waiting[lane]
            if read.cancelled():
                continue
            if read.exception() is not None:
                error = error or read.exception()
                continue
            raw += _flatten(read.result())
        if error is not None and not raw:
            raise error
        return raw

    async def close(self) -> list[Delivery]:
        """At shutdown, on a cluster: wait for the blocking reads still out (at most their block time) and return
        what they brought, for the caller to hand back rather than leave to the reclaim idle time."""
        if not self._waiting:
            return []
        await asyncio.wait(self._waiting.values())
        try:
            return await self._accept(self._collect_waiting())
        except (RedisError, OSError):
            return []

    async def reclaim(self, count: int, min_idle_ms: int) -> list[Delivery]:
        """Take over up to count entries idle for min_idle_ms: their worker stopped heartbeating."""
        raw: list[tuple[str, Any]] = []
        # First, in one round trip, which streams have an entry idle that long at all: a worker has ten
        # streams per kind (five levels, two lanes), nearly always with nothing to take over.
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream in self._lane_of:
                pipe.xpending_range(stream, keys.DISPATCH_GROUP, "-", "+", 1, idle=min_idle_ms)
            idle = await pipe.execute()
        for stream in (s for s, found in zip(self._lane_of, idle, strict=True) if found):
            for _ in range(MAX_RECLAIM_CALLS):
                if len(raw) >= count:
                    break
                reply = await self.redis.xautoclaim(
                    stream,
                    keys.DISPATCH_GROUP,
                    self.consumer,
                    min_idle_ms,
                    start_id=self._reclaim_cursor[stream],
                    count=count - len(raw),
                )
                cursor, entries = reply[0], reply[1]
                # Entries deleted from the stream come back as ids only; Redis already dropped them from the PEL.
                raw.extend((stream, entry) for entry in entries)
                self._reclaim_cursor[stream] = _text(cursor)
                if self._reclaim_cursor[stream] == ZERO_ID:
                    break
        return await self._accept(raw, reclaimed=True)

    async def ack(self, entry_ids: Iterable[str]) -> None:
        """Acknowledge and delete entries whose outcome is persisted (or that must not run)."""
        grouped = _by_stream(entry_ids, self.layout)
        if not grouped:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream, ids in grouped.items():
                pipe.xack(stream, keys.DISPATCH_GROUP, *ids)
                pipe.xdel(stream, *ids)
            await pipe.execute()

    async def refresh(self, entry_ids: Sequence[str]) -> None:
        """Reset the idle time of entries we hold, so XAUTOCLAIM leaves a healthy worker's work alone."""
        await self._set_idle(entry_ids, None)

    async def release(self, entry_ids: Sequence[str], idle_ms: int) -> None:
        """Hand entries back: still ours, but marked idle for idle_ms, so the next reclaim pass of any live
        worker takes them at once instead of after the reclaim idle time."""
        await self._set_idle(entry_ids, idle_ms)

    async def _set_idle(self, entry_ids: Sequence[str], idle_ms: int | None) -> None:
        """XCLAIM our own entries back to us, their idle time reset to idle_ms (None: zero)."""
        grouped = _by_stream(entry_ids, self.layout)
        if not grouped:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream, ids in grouped.items():
                pipe.xclaim(stream, keys.DISPATCH_GROUP, self.consumer, 0, list[Any](ids), idle=idle_ms, justid=True)
            await pipe.execute()

    async def owned(self, entry_ids: Sequence[str]) -> set[str]:
        """Which of entry_ids are still pending for this consumer (not acked, not reclaimed by another)."""
        if not entry_ids:
            return set()
        async with self.redis.pipeline(transaction=False) as pipe:
            for ref in entry_ids:
                stream, entry_id = split_ref(ref, self.layout)
                pipe.xpending_range(stream, keys.DISPATCH_GROUP, entry_id, entry_id, 1, consumername=self.consumer)
            replies = await pipe.execute()
        return {ref for ref, reply in zip(entry_ids, replies, strict=True) if reply}

    async def _accept(self, raw: Sequence[tuple[str, Any]], *, reclaimed: bool = False) -> list[Delivery]:
        """Parse entries; malformed ones can never run, so they are acknowledged and deleted at once."""
        deliveries: list[Delivery] = []
        malformed: list[str] = []
        for stream, (entry_id_raw, fields) in raw:
            kind, priority, shard, surplus = self._lane_of[stream]
            ref = entry_ref(kind, _text(entry_id_raw), priority, shard, surplus)
            try:
                deliveries.append(Delivery(ref, parse_entry(fields, priority, shard, surplus), reclaimed))
            except (KeyError, TypeError, AttributeError, UnicodeDecodeError):
                malformed.append(ref)
        if malformed:
            log.warning("malformed dispatch entries dropped", extra={"entries": ",".join(malformed)})
            await self.ack(malformed)
        return deliveries
