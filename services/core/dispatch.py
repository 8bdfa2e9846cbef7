"""The dispatch streams (one per task kind and priority level): publishing entries, entry references, groups.

An entry reference names the entry across all streams: "<kind>:<stream entry id>" for the default priority
(3), "<kind>:<stream entry id>:p<priority>" for the others (a stream entry id starts with a digit, so the
suffix can never be taken for one), then ":s<shard>" when the entry is in shard 1 or above of its kind's
streams (services.core.keys.KeyLayout.dispatch_shards), then ":u" when it is in the surplus lane (the share
lane keeps the references of before). The task row keeps the reference of the entry
responsible for it; workers pass references back in their start requests.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError

from services.core import keys
from services.core.redis_client import key_layout

_TRACE_PARENT_FIELD = keys.FIELD_TRACE_PARENT.encode()
# A traceparent is 55 characters; a longer field (written by something else) is dropped, not carried on.
MAX_TRACE_PARENT_BYTES = 64


@dataclass(frozen=True)
class DispatchEntry:
    """What a worker needs to ask the scheduler for a task: the id and the dispatch it belongs to."""

    task_id: str
    dispatch_id: str
    kind: str
    # The submission's traceparent ("" when tracing is off or was off when the task was submitted).
    trace_parent: str = ""
    # The task's priority: which of the kind's streams carries the entry.
    priority: int = keys.DEFAULT_PRIORITY
    # Which shard of the kind's streams (0 unless the kind is sharded: set when the entry is queued).
    shard: int = 0
    # In the surplus lane: let through beyond its owner's fair cap while no other owner competed, so read after
    # every share-lane entry of its level (docs/fair-sharing.md).
    surplus: bool = False

    @property
    def lane(self) -> tuple[str, int, int, bool]:
        """The stream of the entry: kind, priority, shard, lane."""
        return self.kind, self.priority, self.shard, self.surplus


def entry_ref(
    kind: str, entry_id: str, priority: int = keys.DEFAULT_PRIORITY, shard: int = 0, surplus: bool = False
) -> str:
    ref = f"{kind}:{entry_id}" if priority == keys.DEFAULT_PRIORITY else f"{kind}:{entry_id}:p{priority}"
    ref = f"{ref}:s{shard}" if shard else ref
    return f"{ref}:u" if surplus else ref


def parse_ref(ref: str) -> tuple[str, str, int, int]:
    """(kind, stream entry id, priority, shard) of an entry reference; ValueError when malformed."""
    kind, entry_id, priority, shard, _ = parse_lane_ref(ref)
    return kind, entry_id, priority, shard


def parse_lane_ref(ref: str) -> tuple[str, str, int, int, bool]:
    """(kind, stream entry id, priority, shard, surplus lane) of an entry reference; ValueError when malformed."""
    head, sep, last = ref.rpartition(":")
    surplus = sep and last == "u"
    if surplus:
        head, sep, last = head.rpartition(":")
    shard = 0
    if sep and last[:1] == "s":
        if not last[1:].isdigit() or last[1:2] == "0" or not last[1:].isascii():
            raise ValueError(f"malformed entry reference {ref!r}")
        shard = int(last[1:])
        head, sep, last = head.rpartition(":")
    priority = keys.DEFAULT_PRIORITY
    if sep and last[:1] == "p":
        if last[1:] not in {str(p) for p in keys.PRIORITIES}:
            raise ValueError(f"malformed entry reference {ref!r}")
        priority = int(last[1:])
        head, sep, last = head.rpartition(":")
    if not sep or not head or not last:
        raise ValueError(f"malformed entry reference {ref!r}")
    return head, last, priority, shard, bool(surplus)


def split_ref(ref: str, layout: keys.KeyLayout = keys.SINGLE) -> tuple[str, str]:
    """(stream key, stream entry id) of an entry reference; ValueError when malformed (or naming a shard beyond
    the layout's). The reference is the same on either layout (the stream's name is not part of it)."""
    kind, entry_id, priority, shard, surplus = parse_lane_ref(ref)
    return layout.dispatch_stream(kind, priority, shard, surplus), entry_id


async def ensure_dispatch_groups(redis: aioredis.Redis, kinds: Iterable[str]) -> None:
    """Create each kind's streams (every priority, shard and lane) and groups if missing; from id 0, so entries
    added earlier are not skipped."""
    layout = key_layout(redis)
    for kind in kinds:
        for shard in range(layout.dispatch_shards):
            for priority in keys.PRIORITIES:
                for surplus in (False, True):
                    try:
                        await redis.xgroup_create(
                            layout.dispatch_stream(kind, priority, shard, surplus),
                            keys.DISPATCH_GROUP,
                            id="0",
                            mkstream=True,
                        )
                    except ResponseError as exc:
                        if "BUSYGROUP" not in str(exc):
                            raise


# Adds every entry of one batch to one stream in a single command, so a reader blocked on the stream is
# woken once with the whole batch (a pipeline of XADDs wakes it on the first, and it must read again for
# the rest). One key per call: safe on a cluster (a pipeline there sends each call to the node of its stream).
_ADD_BATCH = f"""
local ids = {{}}
for i = 1, #ARGV - 1, 2 do
    ids[#ids + 1] = redis.call('XADD', KEYS[1], '*', '{keys.FIELD_TASK_ID}', ARGV[i],
        '{keys.FIELD_DISPATCH_ID}', ARGV[i + 1], '{keys.FIELD_KIND}', ARGV[#ARGV])
end
return ids
"""

# The same, for entries carrying a traceparent: (task id, dispatch id, traceparent) per entry. A separate
# script, so that with tracing off the entries and the script are exactly what they were.
_ADD_TRACED_BATCH = f"""
local ids = {{}}
for i = 1, #ARGV - 1, 3 do
    ids[#ids + 1] = redis.call('XADD', KEYS[1], '*', '{keys.FIELD_TASK_ID}', ARGV[i],
        '{keys.FIELD_DISPATCH_ID}', ARGV[i + 1], '{keys.FIELD_KIND}', ARGV[#ARGV],
        '{keys.FIELD_TRACE_PARENT}', ARGV[i + 2])
end
return ids
"""


def _by_lane(layout: keys.KeyLayout, entries: Sequence[DispatchEntry]) -> dict[tuple[str, int, int, bool], list[int]]:
    """The positions of the entries, by stream (kind, priority, the shard of each task id, lane)."""
    by_lane: dict[tuple[str, int, int, bool], list[int]] = {}
    for position, entry in enumerate(entries):
        lane = (entry.kind, entry.priority, layout.dispatch_shard(entry.task_id), entry.surplus)
        by_lane.setdefault(lane, []).append(position)
    return by_lane


def queue_entries(pipe: Pipeline, entries: Sequence[DispatchEntry]) -> list[DispatchEntry]:
    """Add one command per stream (kind, priority and shard) to a pipeline; returns the entries in the order of
    the ids it will return, each with its shard."""
    return [entry for _, entry in _queue(pipe, entries)]


def _queue(pipe: Pipeline, entries: Sequence[DispatchEntry]) -> list[tuple[int, DispatchEntry]]:
    """queue_entries(), with each entry's position in the given sequence."""
    layout = key_layout(pipe)
    ordered: list[tuple[int, DispatchEntry]] = []
    for (kind, priority, shard, surplus), positions in _by_lane(layout, entries).items():
        batch = [replace(entries[p], shard=shard) for p in positions]
        ordered += zip(positions, batch, strict=True)
        stream = layout.dispatch_stream(kind, priority, shard, surplus)
        if any(entry.trace_parent for entry in batch):
            args = [value for e in batch for value in (e.task_id, e.dispatch_id, e.trace_parent)]
            pipe.eval(_ADD_TRACED_BATCH, 1, stream, *args, kind)
        else:
            args = [value for entry in batch for value in (entry.task_id, entry.dispatch_id)]
            pipe.eval(_ADD_BATCH, 1, stream, *args, kind)
    return ordered


def entry_refs(entries: Sequence[DispatchEntry], replies: Sequence[Sequence[bytes | str]]) -> list[str]:
    """The references of entries (as queue_entries ordered them), from the replies of its commands."""
    ids = [raw for reply in replies for raw in reply]
    return [
        entry_ref(
            entry.kind, raw.decode() if isinstance(raw, bytes) else str(raw), entry.priority, entry.shard, entry.surplus
        )
        for entry, raw in zip(entries, ids, strict=True)
    ]


def published_refs(entries: Sequence[DispatchEntry], replies: Sequence[object]) -> list[tuple[DispatchEntry, str]]:
    """(entry, reference) of the entries that reached their stream, from replies collected without raising
    (execute(raise_on_error=False)): queue_entries ordered the entries by stream, one command per stream, and a
    refused command (its reply an exception, e.g. OOM) added none of its stream's entries."""
    published: list[tuple[DispatchEntry, str]] = []
    start = 0
    for reply in replies:
        lane = entries[start].lane
        end = start
        while end < len(entries) and entries[end].lane == lane:
            end += 1
        if not isinstance(reply, BaseException):
            batch = entries[start:end]
            published += zip(batch, entry_refs(batch, [cast("Sequence[bytes | str]", reply)]), strict=True)
        start = end
    return published


async def publish(redis: aioredis.Redis, entries: Iterable[DispatchEntry]) -> list[str]:
    """Add every entry to its kind's stream in one round trip; returns the references, in the given order."""
    batch = list(entries)
    if not batch:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        ordered = _queue(pipe, batch)
        replies = await pipe.execute()
    refs = dict(zip((p for p, _ in ordered), entry_refs([e for _, e in ordered], replies), strict=True))
    return [refs[position] for position in range(len(batch))]


def parse_entry(
    fields: dict[bytes, bytes], priority: int = keys.DEFAULT_PRIORITY, shard: int = 0, surplus: bool = False
) -> DispatchEntry:
    """An entry read from the stream of the given priority, shard and lane (the stream says them, the entry
    does not)."""
    # A traceparent is only carried on: parsed (and ignored when malformed) where a span continues it.
    trace_parent = fields.get(_TRACE_PARENT_FIELD, b"")
    return DispatchEntry(
        task_id=fields[keys.FIELD_TASK_ID.encode()].decode(),
        dispatch_id=fields[keys.FIELD_DISPATCH_ID.encode()].decode(),
        kind=fields.get(keys.FIELD_KIND.encode(), b"").decode(),
        trace_parent=trace_parent.decode(errors="replace") if len(trace_parent) <= MAX_TRACE_PARENT_BYTES else "",
        priority=priority,
        shard=shard,
        surplus=surplus,
    )


def row_entry(row: Mapping[str, Any]) -> DispatchEntry:
    """The entry of a task row's current dispatch (with its traceparent when the row was read with it)."""
    priority = row.get("priority") or keys.DEFAULT_PRIORITY
    return DispatchEntry(
        str(row["id"]),
        str(row["dispatch_id"]),
        row["kind"],
        row.get("trace_parent") or "",
        priority,
        surplus=bool(row.get("surplus")),
    )
