"""The dispatch streams (one per task kind): publishing entries, entry references, consumer groups.

An entry reference names the entry across all streams: "<kind>:<stream entry id>". The task row keeps
the reference of the entry responsible for it; workers pass references back in their start requests.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError

from services.core import keys


@dataclass(frozen=True)
class DispatchEntry:
    """What a worker needs to ask the scheduler for a task: the id and the dispatch it belongs to."""

    task_id: str
    dispatch_id: str
    kind: str


def entry_ref(kind: str, entry_id: str) -> str:
    return f"{kind}:{entry_id}"


def split_ref(ref: str) -> tuple[str, str]:
    """(stream key, stream entry id) of an entry reference; ValueError when malformed."""
    kind, sep, entry_id = ref.rpartition(":")
    if not sep or not kind or not entry_id:
        raise ValueError(f"malformed entry reference {ref!r}")
    return keys.dispatch_stream(kind), entry_id


async def ensure_dispatch_groups(redis: aioredis.Redis, kinds: Iterable[str]) -> None:
    """Create each kind's stream and group if missing; from id 0, so entries added earlier are not skipped."""
    for kind in kinds:
        try:
            await redis.xgroup_create(keys.dispatch_stream(kind), keys.DISPATCH_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise


def queue_entries(pipe: Pipeline, entries: Sequence[DispatchEntry]) -> None:
    """Add one XADD per entry, to its kind's stream, to a pipeline."""
    for entry in entries:
        pipe.xadd(
            keys.dispatch_stream(entry.kind),
            {
                keys.FIELD_TASK_ID: entry.task_id,
                keys.FIELD_DISPATCH_ID: entry.dispatch_id,
                keys.FIELD_KIND: entry.kind,
            },
        )


def entry_refs(entries: Sequence[DispatchEntry], ids: Sequence[bytes | str]) -> list[str]:
    """The references of entries, from the ids their XADDs returned (in the same order)."""
    return [
        entry_ref(entry.kind, raw.decode() if isinstance(raw, bytes) else str(raw))
        for entry, raw in zip(entries, ids, strict=True)
    ]


async def publish(redis: aioredis.Redis, entries: Iterable[DispatchEntry]) -> list[str]:
    """XADD every entry to its kind's stream in one pipelined round trip; returns the entry references."""
    batch = list(entries)
    if not batch:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        queue_entries(pipe, batch)
        ids = await pipe.execute()
    return entry_refs(batch, ids)


def parse_entry(fields: dict[bytes, bytes]) -> DispatchEntry:
    return DispatchEntry(
        task_id=fields[keys.FIELD_TASK_ID.encode()].decode(),
        dispatch_id=fields[keys.FIELD_DISPATCH_ID.encode()].decode(),
        kind=fields.get(keys.FIELD_KIND.encode(), b"").decode(),
    )
