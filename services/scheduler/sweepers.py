"""Supervision loops of the scheduler: nothing committed is ever left undispatched or unfinished.

- publish: queued tasks nobody published (retry backoff due, or Redis was down at submit time);
- lost entries: queued tasks whose stream entry vanished (Redis lost data) are published again;
- abandoned: running tasks past max_runtime + grace that no worker holds any more are timed out;
- parked events: change events Redis refused after their commit are appended once it is back;
- slot cap: the cap on one user's slots follows the live pool, and tasks it held back are released
  (slot_cap.py); released tasks are published by the publish sweep, woken at once by the database;
- controls: tasks held for a rate limit or a concurrency key are released as they may go (gates.py).
Several schedulers may run these at once: row locks and fencing make a double publish harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
import redis.asyncio as aioredis

from services.core import outbox
from services.core.dispatch import split_ref
from services.core.errors import STORE_ERRORS
from services.core.limits import UserLimits
from services.core.redis_client import key_layout
from services.core.settings import setting
from services.core.transitions import sweeps as transitions
from services.scheduler import gates, slot_cap, store

log = logging.getLogger(__name__)
BATCH = 500


@dataclass(frozen=True)
class SweepConfig:
    """How often the scheduler's sweeps run, and what they consider lost or abandoned."""

    publish_interval_ms: int = setting(
        "RTASK_PUBLISH_INTERVAL_MS", 200, "how often queued tasks not yet in a dispatch stream are published"
    )
    # Redis lost the entry: a restart without it on disk, or a cluster failover before the replica had it.
    lost_entry_check_interval_s: float = setting(
        "RTASK_LOST_ENTRY_CHECK_S", 10.0, "how often stream entries are checked for having been lost"
    )
    lost_entry_age_s: float = setting(
        "RTASK_LOST_ENTRY_AGE_S",
        30.0,
        "a queued task whose stream entry is still missing this long after its publication is published again "
        "(Redis lost it: a restart without it on disk, a cluster failover)",
    )
    abandoned_interval_s: float = setting(
        "RTASK_ABANDONED_INTERVAL_S", 2.0, "how often running tasks are checked for being past that"
    )
    abandoned_grace_s: float = setting(
        "RTASK_ABANDONED_GRACE_S",
        30.0,
        "a running task this long past its `max_runtime` (its worker gone, nobody took over) is timed out",
    )
    parked_events_interval_s: float = setting(
        "RTASK_PARKED_EVENTS_INTERVAL_S",
        0.5,
        "how often change events parked in PostgreSQL (Redis was out) are appended to Redis",
    )
    slot_cap_interval_s: float = setting(
        "RTASK_SLOT_CAP_INTERVAL_S",
        1.0,
        "how often the per-user slot caps are recomputed, and tasks waiting for a slot released",
    )
    # services/scheduler/gates.py.
    rate_idle_s: float = setting(
        "RTASK_RATE_IDLE_S", 1.0, "the longest the rate-limit sweep sleeps when it knows of no refill to wait for"
    )
    key_sweep_interval_s: float = setting(
        "RTASK_KEY_SWEEP_INTERVAL_S", 2.0, "how often tasks waiting for a concurrency key are released"
    )


async def publish_due(pool: asyncpg.Pool, redis: aioredis.Redis) -> int:
    rows = await store.due_for_publish(pool, BATCH)
    if rows and await outbox.dispatch_rows(pool, redis, rows):
        return len(rows)
    return 0


async def republish_lost(pool: asyncpg.Pool, redis: aioredis.Redis, age_s: float) -> int:
    rows = await store.published_before(pool, age_s, BATCH)
    if not rows:
        return 0
    layout = key_layout(redis)
    # A reference to a shard beyond RTASK_DISPATCH_SHARDS (lowered since) names a stream no worker reads any more:
    # its task is as lost as one whose entry is gone.
    readable, unread = [], []
    for row in rows:
        try:
            readable.append((row, split_ref(row["entry_id"], layout)))
        except ValueError:
            unread.append(row)
    async with redis.pipeline(transaction=False) as pipe:
        for _, (stream, entry_id) in readable:
            pipe.xrange(stream, min=entry_id, max=entry_id, count=1)
        found = await pipe.execute()
    lost = unread + [row for (row, _), entries in zip(readable, found, strict=True) if not entries]
    if lost:
        log.warning("republishing tasks whose stream entry was lost", extra={"tasks": len(lost)})
        await outbox.dispatch_rows(pool, redis, lost)
    return len(lost)


async def time_out_abandoned(pool: asyncpg.Pool, redis: aioredis.Redis, grace_s: float) -> int:
    changes = await transitions.time_out_abandoned(pool, grace_s)
    await outbox.emit(redis, changes, pool)
    return len(changes)


async def _every(
    interval_s: float,
    name: str,
    step: Callable[[], Awaitable[None]],
    pause: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Run step() forever at the interval (or after each pause()); store outages are logged and retried."""
    while True:
        try:
            await step()
        except STORE_ERRORS as exc:
            log.warning("sweep failed; will retry", extra={"sweep": name, "error": repr(exc)})
        except Exception:
            # Anything else (asyncpg's InternalClientError on a connection broken mid-query by a PostgreSQL
            # restart, for one) must not end the loop: without the sweepers, requeued tasks are never published.
            log.exception("sweep crashed; will retry", extra={"sweep": name})
        await (pause() if pause is not None else asyncio.sleep(interval_s))


async def _publish_when_woken(
    pool: asyncpg.Pool, redis: aioredis.Redis, interval_s: float, wake: asyncio.Event
) -> None:
    """The publish sweep, at its interval or at once when the database released held tasks."""

    async def publish() -> None:
        await publish_due(pool, redis)

    async def wait() -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), interval_s)
        wake.clear()

    await _every(0, "publish", publish, pause=wait)


async def run_sweepers(
    pool: asyncpg.Pool, redis: aioredis.Redis, config: SweepConfig, limits: UserLimits | None = None
) -> None:
    user_limits = limits or UserLimits()
    released = asyncio.Event()

    async def lost() -> None:
        await republish_lost(pool, redis, config.lost_entry_age_s)

    async def parked() -> None:
        await outbox.append_parked_events(pool, redis)

    async def abandoned() -> None:
        await time_out_abandoned(pool, redis, config.abandoned_grace_s)

    async def cap() -> None:
        await slot_cap.refresh_cap(pool, redis, user_limits)

    async def release() -> None:  # a loop of its own: it needs PostgreSQL only, not the registry in Redis
        if await slot_cap.release_waiting(pool):
            released.set()

    # A task group, not gather: if one of them ends in error the others are cancelled with it, so the
    # supervisor's restart never leaves a second set running beside the first.
    async def keys() -> None:
        await gates.release_keys_waiting(pool)

    async with asyncio.TaskGroup() as group:
        group.create_task(_publish_when_woken(pool, redis, config.publish_interval_ms / 1000, released))
        group.create_task(slot_cap.listen_for_releases(pool, released))
        group.create_task(_every(config.slot_cap_interval_s, "slot cap", cap))
        group.create_task(_every(config.slot_cap_interval_s, "release waiting", release))
        group.create_task(_every(config.lost_entry_check_interval_s, "lost", lost))
        group.create_task(_every(config.abandoned_interval_s, "abandoned", abandoned))
        group.create_task(_every(config.parked_events_interval_s, "parked events", parked))
        group.create_task(_every(config.key_sweep_interval_s, "concurrency keys", keys))
        group.create_task(gates.run_rate_releases(pool, redis, config.rate_idle_s))
