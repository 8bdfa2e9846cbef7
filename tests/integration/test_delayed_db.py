"""Delayed tasks in the database itself: admission (stored, not active, until due), the due transition under
the owner's active limit and slot cap, and history. The full-stack behaviour is in test_delayed.py."""

from __future__ import annotations

import dataclasses
import uuid

import asyncpg
import pytest
import redis.asyncio as aioredis

from services.core import keys
from services.core.limits import UserLimits
from services.core.task_model import QUEUED, SCHEDULED, row_to_task
from services.core.transitions import due
from services.core.transitions import user as transitions
from services.scheduler import sweepers
from tests.conftest import Stores
from tests.helpers import eventually
from tests.integration.test_transitions import database, new_user
from tests.integration.test_user_limits_db import counted, counters, pool

__all__ = ["database", "pool"]  # the fixtures, used by name

GRACE_S = 5.0
# A Redis database of its own (the private scheduler of private_scheduler.py uses 3).
SWEEP_REDIS_DB = 4


def spec(replicas: int = 1, delay_ms: int = 0) -> transitions.Submission:
    start = transitions.Start(delay_ms=delay_ms) if delay_ms else None
    return transitions.Submission("t", "sleep", {}, 0, 1000, replicas, 3, str(uuid.uuid4()), start)


async def due_now(pool: asyncpg.Pool, owner: str) -> None:
    """Wait (on the database's clock) until every SCHEDULED task of the owner is past its run_at."""

    async def past() -> bool:
        return bool(
            await pool.fetchval(
                "SELECT bool_and(run_at <= now()) FROM tasks WHERE owner_id = $1 AND status = $2", owner, SCHEDULED
            )
        )

    await eventually(past, message="run_at passed")


async def test_scheduled_tasks_are_stored_not_active_until_due_then_admitted_under_the_active_limit(
    pool: asyncpg.Pool,
) -> None:
    limits = UserLimits(max_active_tasks=3, max_stored_tasks=6, submit_rate_per_s=0, slot_share=1)
    owner = await new_user(pool)
    queued, _ = await transitions.submit(pool, owner, spec(2), limits)
    # Two active, limit three: three delayed ones are admitted all the same (not active), up to the stored limit.
    delayed, _ = await transitions.submit(pool, owner, spec(3, delay_ms=1), limits)
    assert {r["status"] for r in delayed} == {SCHEDULED}
    assert await counters(pool, owner) == await counted(pool, owner)
    assert (await counters(pool, owner))["active_tasks"] == 2
    with pytest.raises(asyncpg.PostgresError, match="stored tasks"):
        await transitions.submit(pool, owner, spec(2, delay_ms=1), limits)
    await due_now(pool, owner)
    # Due: one fits under the active limit; the others wait SCHEDULED, and nobody is told to wake for them.
    rows = await due.flip_due(pool, 100, limits.max_active_tasks, GRACE_S)
    delayed_ids = {r["id"] for r in delayed}
    assert len(rows) == 1 and rows[0]["id"] in delayed_ids
    assert [(c.previous_status, c.task.status) for c in due.due_changes(rows)] == [(SCHEDULED, QUEUED)]
    assert (await counters(pool, owner))["active_tasks"] == 3
    assert await due.seconds_until_due(pool, limits.max_active_tasks) is None
    assert await due.flip_due(pool, 100, limits.max_active_tasks, GRACE_S) == []
    # Room again (a queued task cancelled): the next due one goes.
    await transitions.cancel(pool, owner, task_id=str(queued[0]["id"]))
    waiting_s = await due.seconds_until_due(pool, limits.max_active_tasks)
    assert waiting_s is not None and waiting_s <= 0
    rows = await due.flip_due(pool, 100, limits.max_active_tasks, GRACE_S)
    assert len(rows) == 1 and rows[0]["id"] in delayed_ids
    assert await counters(pool, owner) == await counted(pool, owner)
    statuses = dict(await pool.fetch("SELECT id, status FROM tasks WHERE owner_id = $1", owner))
    assert sorted(statuses[i] for i in delayed_ids) == [QUEUED, QUEUED, SCHEDULED]


async def test_due_tasks_beyond_the_slot_cap_are_queued_held(pool: asyncpg.Pool) -> None:
    owner = await new_user(pool)
    await pool.execute("UPDATE slot_cap SET slots_per_user = 2")
    try:
        await transitions.submit(pool, owner, spec(5, delay_ms=1), UserLimits.unlimited())
        await due_now(pool, owner)
        rows = await due.flip_due(pool, 100, 0, GRACE_S)
        assert sorted(r["held"] for r in rows) == [False, False, True, True, True]
        assert await counters(pool, owner) == await counted(pool, owner)
        assert (await counters(pool, owner))["waiting_tasks"] == 3
    finally:
        await pool.execute("UPDATE slot_cap SET slots_per_user = NULL")


async def test_history_begins_scheduled_then_records_the_due_transition_and_the_schedule_stays(
    pool: asyncpg.Pool,
) -> None:
    owner = await new_user(pool)
    schedule_id = str(uuid.uuid4())
    firing = dataclasses.replace(spec(1, delay_ms=1), schedule_id=schedule_id)
    (row,), _ = await transitions.submit(pool, owner, firing, UserLimits.unlimited())
    assert row_to_task(row).schedule_id == schedule_id and row_to_task(row).HasField("run_at")
    await due_now(pool, owner)
    await due.flip_due(pool, 100, 0, GRACE_S)
    history = await pool.fetch(
        "SELECT version, from_status, to_status, detail FROM task_history WHERE task_id = $1 ORDER BY version",
        row["id"],
    )
    assert [tuple(h) for h in history] == [(1, None, SCHEDULED, "submitted"), (2, SCHEDULED, QUEUED, "due")]


async def test_a_due_task_flipped_but_never_published_is_published_by_the_sweep(
    pool: asyncpg.Pool, stores: Stores
) -> None:
    owner = await new_user(pool)
    (row,), _ = await transitions.submit(pool, owner, spec(1, delay_ms=1), UserLimits.unlimited())
    await due_now(pool, owner)
    # A publisher that died between its commit and its XADD (no grace here, so the sweep need not wait for it).
    assert [r["id"] for r in await due.flip_due(pool, 100, 0, publish_grace_s=0)] == [row["id"]]
    redis = aioredis.Redis.from_url(stores.redis_url.rsplit("/", 1)[0] + f"/{SWEEP_REDIS_DB}")
    try:
        await redis.flushdb()
        assert await sweepers.publish_due(pool, redis) == 1
        entries = await redis.xrange(keys.dispatch_stream("sleep"))
        assert [fields[keys.FIELD_TASK_ID.encode()].decode() for _, fields in entries] == [str(row["id"])]
    finally:
        await redis.flushdb()
        await redis.aclose()
