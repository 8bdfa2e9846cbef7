"""The dispatch streams (one per task kind and priority level): publishing entries, entry references, groups.

An entry reference names the entry across all streams: "<kind>:<stream entry id>" for the default priority
(3), "<kind>:<stream entry id>:p<priority>" for the others (a stream entry id starts with a digit, so the
suffix can never be taken for one). The task row keeps the reference of the entry responsible for it;
workers pass references back in their start requests.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
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

    @property
    def lane(self) -> tuple[str, int]:
        return self.kind, self.priority


def entry_ref(kind: str, entry_id: str, priority: int = keys.DEFAULT_PRIORITY) -> str:
    if priority == keys.DEFAULT_PRIORITY:
        return f"{kind}:{entry_id}"
    return f"{kind}:{entry_id}:p{priority}"


def parse_ref(ref: str) -> tuple[str, str, int]:
    """(kind, stream entry id, priority) of an entry reference; ValueError when malformed."""
    head, sep, last = ref.rpartition(":")
    priority = keys.DEFAULT_PRIORITY
    if sep and last[:1] == "p":
        if last[1:] not in {str(p) for p in keys.PRIORITIES}:
            raise ValueError(f"malformed entry reference {ref!r}")
        priority = int(last[1:])
        head, sep, last = head.rpartition(":")
    if not sep or not head or not last:
        raise ValueError(f"malformed entry reference {ref!r}")
    return head, last, priority


def split_ref(ref: str, layout: keys.KeyLayout = keys.SINGLE) -> tuple[str, str]:
    """(stream key, stream entry id) of an entry reference; ValueError when malformed. The reference is the same
    on either layout (the stream's name is not part of it)."""
    kind, entry_id, priority = parse_ref(ref)
    return layout.dispatch_stream(kind, priority), entry_id


async def ensure_dispatch_groups(redis: aioredis.Redis, kinds: Iterable[str]) -> None:
    """Create each kind's streams (every priority) and groups if missing; from id 0, so entries added earlier
    are not skipped."""
    layout = key_layout(redis)
    for kind in kinds:
        for priority in keys.PRIORITIES:
            try:
                await redis.xgroup_create(
                    layout.dispatch_stream(kind, priority), keys.DISPATCH_GROUP, id="0", mkstream=True
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


def queue_entries(pipe: Pipeline, entries: Sequence[DispatchEntry]) -> list[DispatchEntry]:
    """Add one command per stream (kind and priority) to a pipeline; returns the entries in the order of the
    ids it will return."""
    layout = key_layout(pipe)
    by_lane: dict[tuple[str, int], list[DispatchEntry]] = {}
    for entry in entries:
        by_lane.setdefault(entry.lane, []).append(entry)
    for (kind, priority), batch in by_lane.items():
        stream = layout.dispatch_stream(kind, priority)
        if any(entry.trace_parent for entry in batch):
            args = [value for e in batch for value in (e.task_id, e.dispatch_id, e.trace_parent)]
            pipe.eval(_ADD_TRACED_BATCH, 1, stream, *args, kind)
        else:
            args = [value for entry in batch for value in (entry.task_id, entry.dispatch_id)]
            pipe.eval(_ADD_BATCH, 1, stream, *args, kind)
    return [entry for batch in by_lane.values() for entry in batch]


def entry_refs(entries: Sequence[DispatchEntry], replies: Sequence[Sequence[bytes | str]]) -> list[str]:
    """The references of entries (as queue_entries ordered them), from the replies of its commands."""
    ids = [raw for reply in replies for raw in reply]
    return [
        entry_ref(entry.kind, raw.decode() if isinstance(raw, bytes) else str(raw), entry.priority)
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
        ordered = queue_entries(pipe, batch)
        replies = await pipe.execute()
    refs = dict(zip((id(e) for e in ordered), entry_refs(ordered, replies), strict=True))
    return [refs[id(entry)] for entry in batch]


def parse_entry(fields: dict[bytes, bytes], priority: int = keys.DEFAULT_PRIORITY) -> DispatchEntry:
    """An entry read from the stream of the given priority (the stream says it, the entry does not)."""
    # A traceparent is only carried on: parsed (and ignored when malformed) where a span continues it.
    trace_parent = fields.get(_TRACE_PARENT_FIELD, b"")
    return DispatchEntry(
        task_id=fields[keys.FIELD_TASK_ID.encode()].decode(),
        dispatch_id=fields[keys.FIELD_DISPATCH_ID.encode()].decode(),
        kind=fields.get(keys.FIELD_KIND.encode(), b"").decode(),
        trace_parent=trace_parent.decode(errors="replace") if len(trace_parent) <= MAX_TRACE_PARENT_BYTES else "",
        priority=priority,
    )


def row_entry(row: Mapping[str, Any]) -> DispatchEntry:
    """The entry of a task row's current dispatch (with its traceparent when the row was read with it)."""
    priority = row.get("priority") or keys.DEFAULT_PRIORITY
    return DispatchEntry(str(row["id"]), str(row["dispatch_id"]), row["kind"], row.get("trace_parent") or "", priority)
