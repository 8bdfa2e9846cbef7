"""Releases of the tasks held by the controls of services.core.transitions.gates, beyond those made at once.

- rate limits: a kind's held tasks are let go as its window has room again, as many as fit, highest priority
  then oldest; the loop sleeps until the next refill it knows of (or until a start holds more tasks, which the
  database notifies), never polling faster than the window frees up;
- concurrency keys: an end releases the next held task of its key in the same statement (migration 0016); this
  sweep catches what such a release skipped (a held task locked at that moment).
A released task is handed back to the slot share (rt_unhold), which publishes it when its owner has room.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg
import redis.asyncio as aioredis

from services.core import rate_limits
from services.core.db import listen_forever
from services.core.errors import STORE_ERRORS
from services.core.rate_limits import RateLimit
from services.core.transitions.gates import RATE_HELD_CHANNEL

log = logging.getLogger(__name__)

# Keys looked at per key sweep, and held tasks released per kind at once (the next pass takes the rest).
KEY_SWEEP_KEYS = 100
RELEASE_BATCH = 1000
# After releasing, the next look comes this soon: the released tasks will have started (taking their tokens).
AFTER_RELEASE_S = 0.05

_HELD_BY_KIND = """
SELECT h.kind, h.waiting, h.due, c.rate_starts, c.rate_period_ms, c.paused_at IS NOT NULL AS paused
FROM (
    SELECT kind, count(*) AS waiting, min(publish_after) AS due FROM tasks
    WHERE held AND status = 1 AND wait_reason = 3 GROUP BY kind
) AS h LEFT JOIN kind_controls AS c ON c.kind = h.kind
"""

_NEXT_HELD = """
SELECT rt_unhold(array_agg(id)) FROM (
    SELECT id FROM tasks WHERE kind = $1 AND held AND status = 1 AND wait_reason = 3
    ORDER BY priority DESC, created_at, id LIMIT $2 FOR UPDATE SKIP LOCKED
) AS w
"""


async def release_rate_limited(pool: asyncpg.Pool, redis: aioredis.Redis, idle_s: float) -> float:
    """Release what each rate-limited kind's window has room for; returns the seconds until the next look."""
    rows = await pool.fetch(_HELD_BY_KIND)
    if not rows:
        return idle_s
    wait_s = idle_s
    unlimited = [r for r in rows if r["rate_starts"] is None]
    limited = [r for r in rows if r["rate_starts"] is not None and not r["paused"]]
    for row in unlimited:  # the limit was cleared: nothing holds them any more
        await pool.fetchval(_NEXT_HELD, row["kind"], RELEASE_BATCH)
        wait_s = min(wait_s, AFTER_RELEASE_S) if row["waiting"] > RELEASE_BATCH else wait_s
    rooms = await rate_limits.take(
        redis, [(r["kind"], 0, RateLimit(r["rate_starts"], r["rate_period_ms"])) for r in limited]
    )
    for row, room in zip(limited, rooms, strict=True):
        if room.room > 0:
            await pool.fetchval(_NEXT_HELD, row["kind"], min(room.room, RELEASE_BATCH))
            wait_s = min(wait_s, AFTER_RELEASE_S)
        else:
            wait_s = min(wait_s, room.wait_ms / 1000)
    return wait_s


async def release_keys_waiting(pool: asyncpg.Pool) -> int:
    released: int = await pool.fetchval("SELECT rt_release_keys_waiting($1)", KEY_SWEEP_KEYS)
    return released


async def run_rate_releases(pool: asyncpg.Pool, redis: aioredis.Redis, idle_s: float) -> None:
    """The rate sweep, forever: at the next refill, or at once when a start held tasks for a rate limit."""
    held = asyncio.Event()
    listening = asyncio.create_task(listen_forever(pool, RATE_HELD_CHANNEL, lambda _p: held.set(), held.set))
    try:
        while True:
            wait_s = idle_s
            try:
                wait_s = await release_rate_limited(pool, redis, idle_s)
            except STORE_ERRORS as exc:
                log.warning("sweep failed; will retry", extra={"sweep": "rate limits", "error": repr(exc)})
            except Exception:
                log.exception("sweep crashed; will retry", extra={"sweep": "rate limits"})
            held.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(held.wait(), max(0.0, wait_s))
    finally:
        listening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listening
