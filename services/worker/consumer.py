"""The worker's side of the dispatch stream: read, reclaim, refresh and acknowledge entries.

Every call is one round trip (pipelined where it touches several entries).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from services.core import keys
from services.core.dispatch import DispatchEntry, parse_entry

log = logging.getLogger(__name__)

# XAUTOCLAIM calls per reclaim pass: each scans at most 10 * COUNT pending entries, so a pass is bounded.
MAX_RECLAIM_CALLS = 4
ZERO_ID = "0-0"


@dataclass(frozen=True)
class Delivery:
    """A stream entry handed to this worker, by XREADGROUP or XAUTOCLAIM."""

    entry_id: str
    entry: DispatchEntry


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class DispatchConsumer:
    """One consumer (this worker) of the dispatch group."""

    def __init__(self, redis: aioredis.Redis, consumer: str) -> None:
        self.redis = redis
        self.consumer = consumer
        # Where the next XAUTOCLAIM pass continues, so successive passes walk the whole pending list.
        self._reclaim_cursor = ZERO_ID

    async def read(self, count: int, block_ms: int) -> list[Delivery]:
        """New entries for this consumer (at most count), waiting up to block_ms for the first."""
        reply: Any = await self.redis.xreadgroup(
            keys.DISPATCH_GROUP, self.consumer, {keys.DISPATCH_STREAM: ">"}, count=count, block=block_ms
        )
        raw = [entry for _stream, entries in reply or [] for entry in entries]
        return await self._accept(raw)

    async def reclaim(self, count: int, min_idle_ms: int) -> list[Delivery]:
        """Take over up to count entries idle for min_idle_ms: their worker stopped heartbeating."""
        raw: list[Any] = []
        for _ in range(MAX_RECLAIM_CALLS):
            reply = await self.redis.xautoclaim(
                keys.DISPATCH_STREAM,
                keys.DISPATCH_GROUP,
                self.consumer,
                min_idle_ms,
                start_id=self._reclaim_cursor,
                count=count - len(raw),
            )
            cursor, entries = reply[0], reply[1]
            # Entries deleted from the stream come back as ids only; Redis already dropped them from the PEL.
            raw.extend(entries)
            self._reclaim_cursor = _text(cursor)
            if self._reclaim_cursor == ZERO_ID or len(raw) >= count:
                break
        return await self._accept(raw)

    async def ack(self, entry_ids: Iterable[str]) -> None:
        """Acknowledge and delete entries whose outcome is persisted (or that must not run)."""
        ids = list(entry_ids)
        if not ids:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xack(keys.DISPATCH_STREAM, keys.DISPATCH_GROUP, *ids)
            pipe.xdel(keys.DISPATCH_STREAM, *ids)
            await pipe.execute()

    async def refresh(self, entry_ids: Sequence[str]) -> None:
        """Reset the idle time of entries we hold, so XAUTOCLAIM leaves a healthy worker's work alone."""
        if not entry_ids:
            return
        await self.redis.xclaim(
            keys.DISPATCH_STREAM, keys.DISPATCH_GROUP, self.consumer, 0, list(entry_ids), justid=True
        )

    async def owned(self, entry_ids: Sequence[str]) -> set[str]:
        """Which of entry_ids are still pending for this consumer (not acked, not reclaimed by another)."""
        if not entry_ids:
            return set()
        async with self.redis.pipeline(transaction=False) as pipe:
            for entry_id in entry_ids:
                pipe.xpending_range(
                    keys.DISPATCH_STREAM, keys.DISPATCH_GROUP, entry_id, entry_id, 1, consumername=self.consumer
                )
            replies = await pipe.execute()
        return {entry_id for entry_id, reply in zip(entry_ids, replies, strict=True) if reply}

    async def _accept(self, raw: Sequence[Any]) -> list[Delivery]:
        """Parse entries; malformed ones can never run, so they are acknowledged and deleted at once."""
        deliveries: list[Delivery] = []
        malformed: list[str] = []
        for entry_id_raw, fields in raw:
            entry_id = _text(entry_id_raw)
            try:
                deliveries.append(Delivery(entry_id, parse_entry(fields)))
            except (KeyError, TypeError, AttributeError, UnicodeDecodeError):
                malformed.append(entry_id)
        if malformed:
            log.warning("malformed dispatch entries dropped", extra={"entries": ",".join(malformed)})
            await self.ack(malformed)
        return deliveries
