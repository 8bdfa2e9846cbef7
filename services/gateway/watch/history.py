"""Reading one owner's event history: where it ends, and what follows a position if nothing was lost."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from services.core.events import ORIGIN, StoredEvent, decode_owner_entry
from services.core.redis_client import key_layout


async def last_position(redis: aioredis.Redis, owner_id: str) -> str:
    """The id of the owner's newest event, or ORIGIN when there is none yet."""
    newest: Any = await redis.xrevrange(key_layout(redis).owner_events_stream(owner_id), "+", "-", count=1)
    return newest[0][0].decode() if newest else ORIGIN


async def read_after(redis: aioredis.Redis, owner_id: str, position: str, count: int) -> list[StoredEvent] | None:
    """Up to `count` events following `position`, oldest first; None when the history from there is broken.

    Broken means the events right after `position` are gone (trimmed), or `position` was never in this
    history (a token from elsewhere, or a history lost with its server): the caller must start over from a
    snapshot. Each entry names the entry it follows, so continuity is checked, not guessed from timestamps.
    """
    stream = key_layout(redis).owner_events_stream(owner_id)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.xrange(stream, f"({position}", "+", count=count)
        pipe.xrevrange(stream, "+", "-", count=1)
        replies: Any = await pipe.execute()
    entries, newest = replies
    if entries:
        events = [decode_owner_entry(owner_id, entry_id, fields) for entry_id, fields in entries]
        return events if events[0].after == position else None
    newest_id = newest[0][0].decode() if newest else ORIGIN
    return [] if newest_id == position else None
