"""The due transition: SCHEDULED tasks whose run_at has come become QUEUED, a batch per statement.

Any number of schedulers may run it at once: each statement claims its rows with FOR UPDATE SKIP LOCKED and
flips them in the same statement, so a row is flipped (and so published) by exactly one of them; a row another
statement flipped meanwhile is re-checked under its lock and no longer SCHEDULED.

Admission when due: a SCHEDULED task was admitted against its owner's stored-task limit and the submission rate
at submission; it counts toward the active-task limit only from the moment it is QUEUED. So a due task whose
owner is at the active limit stays SCHEDULED, past its run_at, until the owner has room (one of their active
tasks ends), then becomes QUEUED like any other, oldest run_at first: never lost, never over the limit. A due
task admitted beyond its owner's slot cap is QUEUED held, as a submission beyond it is (migration 0008), or,
beyond the fair cap while its owner is alone in the pool, published to the surplus lane (migration 0018).
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from services.core.events import TaskChange
from services.core.task_model import QUALIFIED_SUMMARY_COLUMNS, QUEUED, SCHEDULED
from services.core.transitions.rules import change_for, history_of

# The task's owner has room under the active limit ($n; 0: no limit): a correlated test rather than a join, so
# with the limit off no users row is read at all.
_HAS_ROOM = "(${n} = 0 OR EXISTS (SELECT 1 FROM users WHERE users.id = tasks.owner_id AND users.active_tasks < ${n}))"

# One batch, in one autocommit statement: the due rows of owners with room (oldest run_at first, rows another
# statement holds skipped), their owners' rows locked in id order (as the counter triggers lock them; they wait
# only for owners, never for a task row, so this cannot deadlock), each owner's tasks admitted in run_at order
# while under the active limit ($2) and held beyond the slot cap, flipped with their history rows. Returns the
# summary columns (events and dispatch entries need nothing else), `held`, and the submission's traceparent
# (its dispatch entry continues the submission's trace, as any dispatch does).
_FLIP_DUE = f"""
WITH candidates AS (
    SELECT tasks.id, tasks.owner_id, tasks.run_at FROM tasks
    WHERE tasks.status = {SCHEDULED} AND tasks.run_at <= now() AND {_HAS_ROOM.format(n=2)}
    ORDER BY tasks.run_at LIMIT $1 FOR UPDATE OF tasks SKIP LOCKED
),
owners AS (
    SELECT users.id, users.active_tasks, users.dispatched_tasks FROM users
    WHERE users.id IN (SELECT owner_id FROM candidates) ORDER BY users.id FOR NO KEY UPDATE
),
ranked AS (
    SELECT c.id, c.owner_id, o.active_tasks, o.dispatched_tasks,
        row_number() OVER (PARTITION BY c.owner_id ORDER BY c.run_at, c.id) AS n
    FROM candidates AS c JOIN owners AS o ON o.id = c.owner_id
),
capped AS (
    SELECT ranked.id,
        coalesce(ranked.dispatched_tasks + ranked.n > rt_hold_cap(cap, ranked.owner_id), false) AS held,
        coalesce(ranked.dispatched_tasks + ranked.n > cap.slots_per_user, false) AS beyond_share
    FROM ranked CROSS JOIN slot_cap AS cap
    WHERE $2 = 0 OR ranked.active_tasks + ranked.n <= $2
),
chosen AS (SELECT capped.id, capped.held, capped.beyond_share AND NOT capped.held AS surplus FROM capped),
changed AS (
    UPDATE tasks SET status = {QUEUED}, held = chosen.held, wait_reason = chosen.held::int, surplus = chosen.surplus,
        published = false,
        published_at = NULL,
        publish_after = CASE WHEN chosen.held THEN 'infinity'::timestamptz
                             ELSE now() + make_interval(secs => $3) END
    FROM chosen WHERE tasks.id = chosen.id
    RETURNING {QUALIFIED_SUMMARY_COLUMNS}, tasks.held, tasks.trace_parent
),
recorded AS ({history_of("changed", str(SCHEDULED), "'due'")})
SELECT * FROM changed
"""

# Seconds until the earliest run_at of a task that could be flipped (negative when one is overdue); NULL when
# none. Measured on the database's clock, the one run_at was computed on.
_NEXT_DUE = f"""
SELECT extract(epoch FROM tasks.run_at - clock_timestamp())::float8 FROM tasks
WHERE tasks.status = {SCHEDULED} AND {_HAS_ROOM.format(n=1)}
ORDER BY tasks.run_at LIMIT 1
"""


async def flip_due(
    pool: asyncpg.Pool, limit: int, max_active_tasks: int, publish_grace_s: float
) -> list[asyncpg.Record]:
    """Up to `limit` due tasks made QUEUED, committed; their rows (with `held`).

    Rows not held are to be published now by the caller, with due_changes(rows) announced; if it dies first, the
    publish sweep publishes them after publish_grace_s, as for a fresh submission.
    """
    return list(await pool.fetch(_FLIP_DUE, limit, max_active_tasks, publish_grace_s))


def due_changes(rows: Sequence[asyncpg.Record]) -> list[TaskChange]:
    """The change events of rows flip_due returned."""
    return [change_for(row, SCHEDULED) for row in rows]


async def seconds_until_due(pool: asyncpg.Pool, max_active_tasks: int) -> float | None:
    """How long until the next task can fall due (≤ 0: one is due now); None when no task waits."""
    value: float | None = await pool.fetchval(_NEXT_DUE, max_active_tasks)
    return value
