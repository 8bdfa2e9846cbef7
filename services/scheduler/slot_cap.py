"""The cap on the worker slots one user's tasks may hold at once, and the release of the tasks it holds back.

A submission beyond its owner's cap is stored held (queued, unpublished). When one of the owner's dispatched
tasks ends, the database releases the next held ones in the same statement and notifies RELEASED_CHANNEL
(migration 0008); the sweeper listening here then publishes them at once. The cap itself follows the live
pool and the demand: a share of the slots of the workers in the registry, lowered to the max-min fair share
between the owners with active tasks (services.core.limits), written to PostgreSQL for the submit statements
and the releases to read; when it grows, or a release skipped a task being changed, the periodic release
here lets the waiting tasks through. A held task is never lost: it is released at the latest by that sweep.

With the fair share on, the cap written here is the fair one; the owner alone in the pool (the only one with
active tasks) is held only by the fixed ceiling, its tasks beyond the fair cap going to the surplus lanes
(migration 0018): so the scheduler also writes the ceiling and which owner, if any, is alone.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import redis.asyncio as aioredis

from services.core import worker_registry
from services.core.db import listen_forever
from services.core.limits import UserLimits

log = logging.getLogger(__name__)

RELEASED_CHANNEL = "rt_released"
# Owners released per sweep (each locked in turn): the next sweep takes the rest.
RELEASE_OWNERS = 100


# slot_cap.lone_owner when no owner has active tasks: whoever submits first is alone (migration 0018).
NO_OWNER = "00000000-0000-0000-0000-000000000000"


async def refresh_cap(pool: asyncpg.Pool, redis: aioredis.Redis, limits: UserLimits) -> int | None:
    """Write the cap for the live pool as it is now (nothing when unchanged); returns it."""
    workers = await worker_registry.live_workers(redis)
    live_slots = sum(w.slots for w in workers)
    # One row per owner with active tasks. No index: it would make every counter update of a users row a
    # non-HOT update, on the hot path, to spare a scan of the users table once a second.
    active = await pool.fetch("SELECT id, active_tasks FROM users WHERE active_tasks > 0")
    cap = limits.slots_per_user(live_slots, [r["active_tasks"] for r in active])
    # Which owner may go beyond the fair cap (to the surplus lane): the one alone with active tasks, or anyone
    # when nobody has any (NO_OWNER); none when several compete or the fair share is off.
    lone = None
    if limits.fair_share:
        lone = str(active[0]["id"]) if len(active) == 1 else NO_OWNER if not active else None
    await pool.execute(
        "UPDATE slot_cap SET slots_per_user = $1, ceiling_slots = $2, lone_owner = $3::uuid "
        "WHERE (slots_per_user, ceiling_slots, lone_owner) IS DISTINCT FROM ($1, $2, $3::uuid)",
        cap,
        limits.slot_ceiling(live_slots),
        lone,
    )
    return cap


async def release_waiting(pool: asyncpg.Pool) -> int:
    """Release held tasks of owners below the cap; returns how many (the publish sweep publishes them)."""
    released: int = await pool.fetchval("SELECT rt_release_waiting($1)", RELEASE_OWNERS)
    return released


async def listen_for_releases(pool: asyncpg.Pool, wake: asyncio.Event, check_interval_s: float = 5.0) -> None:
    """Set `wake` whenever the database released held tasks (and when listening starts: anything released while
    nobody listened is published then), for as long as the sweeper runs."""
    await listen_forever(pool, RELEASED_CHANNEL, lambda _payload: wake.set(), wake.set, check_interval_s)
