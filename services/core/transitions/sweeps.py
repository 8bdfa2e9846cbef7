"""What the scheduler writes on its own: progress of running attempts, and attempts nobody finished.

The statements return summary columns only: their rows make change events, which carry neither payload nor result.
"""

from __future__ import annotations

import asyncpg

from services.core import task_metrics
from services.core.events import TaskChange
from services.core.task_model import (
    CANCELLED,
    CANCELLING,
    QUALIFIED_SUMMARY_COLUMNS,
    RUNNING,
    TIMED_OUT,
)
from services.core.transitions.rules import change_for, history_of, is_uuid

# Progress is not a transition, but it bumps the task's version, by which watchers drop stale updates: its commit
# waits for the disk (and a synchronous standby) like any other. A commit that did not wait could be lost in a
# crash or a failover after its event went out, and the version handed out again with other content (the task's
# end), which watchers would then drop as stale. One autocommit statement per flush of many tasks, so the wait
# is paid once per flush. SKIP LOCKED: progress is droppable, and never worth waiting for (or deadlocking with) a
# finish. Only progress changes, so the update is HOT when the page has room.
_PROGRESS = f"""
WITH t AS (
    SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::float8[], $4::text[]) AS u(id, fence, progress, worker_id)
),
locked AS (
    SELECT tasks.id FROM tasks JOIN t ON tasks.id = t.id
    WHERE tasks.fence = t.fence AND tasks.worker_id = t.worker_id
    AND tasks.status IN ({RUNNING}, {CANCELLING}) AND tasks.progress <> t.progress
    ORDER BY tasks.id FOR UPDATE OF tasks SKIP LOCKED
)
UPDATE tasks SET progress = t.progress FROM t, locked WHERE tasks.id = t.id AND tasks.id = locked.id
RETURNING {QUALIFIED_SUMMARY_COLUMNS}
"""


async def record_progress(pool: asyncpg.Pool, reports: dict[tuple[str, int, str], float]) -> list[TaskChange]:
    """Store the latest progress of each (task, fence, worker); reports of superseded attempts, and of workers
    that do not hold the task, change nothing."""
    keys = [key for key in reports if is_uuid(key[0])]
    if not keys:
        return []
    rows = await pool.fetch(
        _PROGRESS,
        [k[0] for k in keys],
        [k[1] for k in keys],
        [max(0.0, min(1.0, reports[k])) for k in keys],
        [k[2] for k in keys],
    )
    return [change_for(r, r["status"]) for r in rows]


# Running tasks past max_runtime + grace, timed out (or cancelled, when a cancel was pending) with their
# history in one statement; SKIP LOCKED leaves alone a task whose finish is being recorded right now.
_ABANDONED = f"""
WITH target AS (
    SELECT id, status FROM tasks WHERE status IN ({RUNNING}, {CANCELLING})
    AND started_at + make_interval(secs => max_runtime_ms / 1000.0 + $1) < now()
    ORDER BY id LIMIT 500 FOR UPDATE SKIP LOCKED
),
changed AS (
    UPDATE tasks SET status = CASE WHEN target.status = {CANCELLING} THEN {CANCELLED} ELSE {TIMED_OUT} END,
        finished_at = now(), error = 'no worker reported within max_runtime plus grace'
    FROM target WHERE tasks.id = target.id
    RETURNING {QUALIFIED_SUMMARY_COLUMNS}, target.status AS before
),
recorded AS ({history_of("changed", "before", "'abandoned'")})
SELECT * FROM changed
"""


async def time_out_abandoned(pool: asyncpg.Pool, grace_s: float) -> list[TaskChange]:
    """Running tasks past max_runtime + grace: their worker is gone and nobody took over."""
    rows = await pool.fetch(_ABANDONED, grace_s)
    task_metrics.ended(rows)
    return [change_for(r, r["before"]) for r in rows]
