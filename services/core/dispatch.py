"""The dispatch stream: publishing task entries and making sure the consumer group exists."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from services.core import keys


@dataclass(frozen=True)
class DispatchEntry:
    """What a worker needs to ask the scheduler for a task: the id and the dispatch it belongs to."""

    task_id: str
    dispatch_id: str
    kind: str


async def ensure_dispatch_group(redis: aioredis.Redis) -> None:
    """Create the stream and group if missing; from id 0 so entries added before creation are not skipped."""
    try:
        await redis.xgroup_create(keys.DISPATCH_STREAM, keys.DISPATCH_GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def publish(redis: aioredis.Redis, entries: Iterable[DispatchEntry]) -> list[str]:
    """XADD every entry in one pipelined round trip; returns the entry ids in order."""
    batch = list(entries)
    if not batch:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for entry in batch:
            pipe.xadd(
                keys.DISPATCH_STREAM,
                {
                    keys.FIELD_TASK_ID: entry.task_id,
                    keys.FIELD_DISPATCH_ID: entry.dispatch_id,
                    keys.FIELD_KIND: entry.kind,
                },
            )
        ids = await pipe.execute()
    return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]


def parse_entry(fields: dict[bytes, bytes]) -> DispatchEntry:
    return DispatchEntry(
        task_id=fields[keys.FIELD_TASK_ID.encode()].decode(),
        dispatch_id=fields[keys.FIELD_DISPATCH_ID.encode()].decode(),
        kind=fields.get(keys.FIELD_KIND.encode(), b"").decode(),
    )
