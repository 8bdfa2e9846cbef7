"""A user's submission and cancellation from commit to announcement: what SubmitTask, CancelTask and CancelBatch
do, and what a schedule's firing does in their name, through one path."""

from __future__ import annotations

import asyncpg
import redis.asyncio as aioredis

from services.core import commands, outbox, tracing
from services.core.events import TaskChange
from services.core.limits import UserLimits
from services.core.task_model import QUEUED, rows_to_tasks
from services.core.transitions import user as transitions
from services.core.transitions.rules import change_for


async def submit(
    pool: asyncpg.Pool,
    redis: aioredis.Redis,
    owner: str,
    spec: transitions.Submission,
    limits: UserLimits,
    trace_parent: str | None = None,
) -> tuple[list[asyncpg.Record], bool]:
    """Insert the submission (idempotent on its request_id), then announce and dispatch it.

    Returns the rows by replica index and whether this call created them. trace_parent (tracing on) is the
    span every later step of these tasks continues.
    """
    rows, created = await transitions.submit(pool, owner, spec, limits, trace_parent)
    tasks = rows_to_tasks(rows)
    if created:
        changes = [TaskChange(owner, task, 0) for task in tasks]
        # Held replicas wait for the owner's slot cap; they are published once released (migration 0008).
        # SCHEDULED ones wait for their run_at: the schedulers' due publisher publishes them then.
        dispatchable = [row for row in rows if row["status"] == QUEUED and not row["held"]]
        with tracing.span("task.publish", {"task.count": len(rows), "task.kind": spec.kind}):
            await outbox.emit_and_dispatch(pool, redis, dispatchable, changes)
    else:
        # A retried submission: the first attempt's caller may have died before announcing the tasks.
        await outbox.emit(redis, [TaskChange(owner, task, task.status) for task in tasks], pool)
    return rows, created


async def cancel(
    pool: asyncpg.Pool, redis: aioredis.Redis, owner: str, *, task_id: str | None = None, batch_id: str | None = None
) -> transitions.CancelResult:
    """Cancel one task or a batch, push the stops to the workers running them and announce the changes.

    An empty result means no such task or batch of this owner.
    """
    result = await transitions.cancel(pool, owner, task_id=task_id, batch_id=batch_id)
    if result.rows:
        # A repeated cancel announces the state again, in case the first one's caller died before doing so.
        changes = result.changes or [change_for(r, r["status"]) for r in result.rows]
        await outbox.stop_and_emit(pool, redis, result.to_stop, commands.CANCELLED, changes)
    return result
