"""Retry and delete of many tasks at once (RetryTasks, DeleteTasks): the single-task statements of
transitions.user made set-based, one autocommit statement per page of at most 500 ids. A bulk cancel is
transitions.user.cancel with a list of ids.

Rows are locked in id order, as everywhere else, so a page cannot deadlock with another multi-row change; each
statement re-reads the status under its lock, so a task that changed since the page was chosen is skipped
rather than acted on twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import asyncpg

from services.core.limits import UserLimits
from services.core.task_model import (
    QUALIFIED_SUMMARY_COLUMNS,
    QUALIFIED_TASK_COLUMNS,
    QUEUED,
    RETRYABLE,
    UNFINISHED,
)
from services.core.transitions.rules import PUBLISH_GRACE_S, history_of

# What RetryTask writes (transitions.user._RETRY without a delay), for every retryable task of the page. The
# retried tasks are admitted together, as one submission of n tasks (rt_admit, migration 0008: active and stored
# limits, the submission rate): a page over a limit is refused whole (RT003), nothing written. Those beyond the
# owner's slot cap wait held, the oldest dispatched first (those beyond its fair cap while it is alone in the pool
# go to the surplus lane, rt_admit_lanes, migration 0018). $3 holds a fresh dispatch id per listed id.
_RETRY_MANY = f"""
WITH target AS (
    SELECT id, status, created_at FROM tasks WHERE id = ANY($1::uuid[]) AND owner_id = $2 ORDER BY id FOR UPDATE
),
retryable AS (SELECT * FROM target WHERE status = ANY($4::smallint[])),
admitted AS (
    SELECT a.lanes[1] AS dispatchable, a.lanes[2] AS shared FROM (
        SELECT rt_admit_lanes($2, '', c.n, 0, $5, $6, $7, $8) AS lanes
        FROM (SELECT count(*)::int AS n FROM retryable) AS c WHERE c.n > 0
    ) AS a
),
numbered AS (
    SELECT retryable.id, retryable.status, d.dispatch_id,
        row_number() OVER (ORDER BY retryable.created_at, retryable.id) - 1 AS idx
    FROM retryable JOIN unnest($1::uuid[], $3::uuid[]) AS d(id, dispatch_id) ON d.id = retryable.id
),
changed AS (
    UPDATE tasks SET status = {QUEUED}, attempt = 0, dead_lettered = false, error = '', progress = 0,
        result = NULL, started_at = NULL, finished_at = NULL, worker_id = '', dispatch_id = numbered.dispatch_id,
        published = false, published_at = NULL, held = numbered.idx >= admitted.dispatchable, run_at = NULL,
        surplus = numbered.idx >= admitted.shared AND numbered.idx < admitted.dispatchable,
        publish_after = CASE WHEN numbered.idx >= admitted.dispatchable THEN 'infinity'::timestamptz
                             ELSE now() + make_interval(secs => $9) END
    FROM numbered, admitted WHERE tasks.id = numbered.id
    RETURNING {QUALIFIED_TASK_COLUMNS}, tasks.held, tasks.trace_parent, numbered.status AS before
),
recorded AS ({history_of("changed", "before", "'retry requested'")})
SELECT * FROM changed
"""


async def retry(pool: asyncpg.Pool, owner_id: str, task_ids: Sequence[str], limits: UserLimits) -> list[asyncpg.Record]:
    """The owner's failed, timed-out or cancelled tasks among `task_ids` (distinct) queued again, each with a
    fresh set of attempts; returns them as they now are, with `held` and `before` (the status they had)."""
    if not task_ids:
        return []
    return list(
        await pool.fetch(
            _RETRY_MANY,
            list(task_ids),
            owner_id,
            [str(uuid.uuid4()) for _ in task_ids],
            sorted(RETRYABLE),
            limits.max_active_tasks,
            limits.max_stored_tasks,
            limits.submit_rate_per_s,
            limits.submit_burst,
            PUBLISH_GRACE_S,
        )
    )


# What DeleteTask does, for every finished task of the page (their history goes by trigger, migration 0004).
_DELETE_MANY = f"""
WITH target AS (
    SELECT id, status FROM tasks WHERE id = ANY($1::uuid[]) AND owner_id = $2 ORDER BY id FOR UPDATE
)
DELETE FROM tasks USING target WHERE tasks.id = target.id AND target.status <> ALL($3::smallint[])
RETURNING {QUALIFIED_SUMMARY_COLUMNS}
"""


async def delete(pool: asyncpg.Pool, owner_id: str, task_ids: Sequence[str]) -> list[asyncpg.Record]:
    """The owner's finished tasks among `task_ids` removed; returns them as they were."""
    if not task_ids:
        return []
    return list(await pool.fetch(_DELETE_MANY, list(task_ids), owner_id, sorted(UNFINISHED)))
