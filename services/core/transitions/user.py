"""The transitions users ask for through a gateway: submit, cancel, retry, delete, clear history.

Each is committed (history row included) before the caller announces the change it returns.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from services.core import task_metrics
from services.core.errors import FailedPrecondition
from services.core.events import TaskChange
from services.core.limits import UserLimits
from services.core.task_model import (
    CANCELLED,
    CANCELLING,
    QUALIFIED_SUMMARY_COLUMNS,
    QUALIFIED_TASK_COLUMNS,
    QUEUED,
    RETRYABLE,
    RUNNING,
    SCHEDULED,
    SUMMARY_COLUMNS,
    TASK_COLUMNS,
    TERMINAL,
    UNFINISHED,
    in_batch,
    status_name,
)
from services.core.transitions.rules import (
    HISTORY_COLUMNS,
    HISTORY_TABLE,
    PUBLISH_GRACE_S,
    InvalidTransition,
    RunningRef,
    change_for,
    check_transition,
    history_of,
)


@dataclass(frozen=True)
class Start:
    """When a delayed submission starts: at run_at, or delay_ms after the database's now (one clock for every
    replica, whatever the gateway's clock). A submission without one starts at once."""

    run_at: datetime | None = None
    delay_ms: int = 0


# SubmitTaskRequest.priority: the value of 0 (unset). Its range is the contract's (services.core.validation).
DEFAULT_PRIORITY = 3


@dataclass(frozen=True)
class Submission:
    """A validated SubmitTask request; start is set only for a task due in the future (SCHEDULED until then)."""

    name: str
    kind: str
    payload: dict[str, Any]
    workload_ms: int
    max_runtime_ms: int
    replicas: int
    max_attempts: int
    request_id: str
    start: Start | None = None
    # The recurring schedule whose firing submits this (Task.schedule_id); None for a user's own submission.
    schedule_id: str | None = None
    # 1 (lowest) to 5 (most urgent).
    priority: int = DEFAULT_PRIORITY
    # At most concurrency_limit of the owner's tasks with this key run at once; None: no key (limit 0).
    concurrency_key: str | None = None
    concurrency_limit: int = 0


DEFAULT_LIMITS = UserLimits()


# -- submission ---------------------------------------------------------------------------------------
async def submit(
    pool: asyncpg.Pool,
    owner_id: str,
    spec: Submission,
    limits: UserLimits = DEFAULT_LIMITS,
    trace_parent: str | None = None,
) -> tuple[list[asyncpg.Record], bool]:
    """Insert every replica in one statement; a repeated request_id returns the first request's rows.

    Returns the rows (by replica index, each with `held`: waiting for the owner's slot cap, so not to be
    dispatched now) and whether this call created them. A limit reached refuses the whole statement (RT003).
    trace_parent (the submitting call's span, when tracing is on) is kept for every dispatch of the tasks.
    """
    ids = [str(uuid.uuid4()) for _ in range(spec.replicas)]
    batch_id = ids[0]  # the first replica's id: see task_model.in_batch
    try:
        rows = await _insert_submission(pool, owner_id, spec, batch_id, ids, limits, trace_parent)
    except _SubmissionExists:
        pass
    except asyncpg.TransactionRollbackError:
        # A repeated request_id's insert waits on a stored replica another transaction is changing (a start,
        # a publication mark), whose counter trigger waits for the owner's row this statement locked first:
        # PostgreSQL ends one of them as a deadlock. Nothing of this one was written. When the request_id is
        # stored, the answer is that of any repeat; otherwise the caller is told to retry (ABORTED).
        existing = await _stored_submission(pool, owner_id, spec.request_id)
        if not existing:
            raise
        return existing, False
    else:
        task_metrics.submitted(rows)
        return rows, True
    return await _stored_submission(pool, owner_id, spec.request_id), False


async def _stored_submission(pool: asyncpg.Pool, owner_id: str, request_id: str) -> list[asyncpg.Record]:
    existing = await pool.fetch(
        f"SELECT {TASK_COLUMNS}, held FROM tasks WHERE owner_id = $1 AND request_id = $2 ORDER BY replica_index",
        owner_id,
        request_id,
    )
    return list(existing)


class _SubmissionExists(Exception):
    """Some replica of this request_id is already stored: the statement rolled back."""


# Refusal raised by rt_refuse() (migration 0003).
_REFUSED = "RT001"

# The per-user limits, checked under the owner's row lock by rt_admit() (migration 0008) before anything is
# written: active tasks, stored tasks, the submission rate. It returns how many replicas may be dispatched now
# under the owner's slot cap, and how many of those go to the share lane (rt_admit_lanes, migration 0018: the
# others, let through beyond the fair cap while their owner is alone in the pool, go to the surplus lane); the
# rest are inserted held (never published until released).
_ADMIT = "rt_admit_lanes($2, $7, cardinality($1::uuid[]), cardinality($1::uuid[]), $14, $15, $16, $17)"

# Every replica in one autocommit statement (one round trip, one commit; its first history row is derived
# from the task row, migration 0006). Admission comes first: the insert reads its answer, so runs after it.
# ON CONFLICT skips replicas of a request_id used before; when some were inserted all the same, the guard
# refuses the statement, so nothing of it is kept. When none was, the statement returns no row.
_INSERT_SUBMISSION = f"""
WITH admitted AS (SELECT a.lanes[1] AS dispatchable, a.lanes[2] AS shared FROM (SELECT {_ADMIT} AS lanes) AS a),
inserted AS (
    INSERT INTO tasks (id, owner_id, name, kind, payload, status, max_attempts, request_id, batch_id,
                       replica_index, workload_ms, max_runtime_ms, dispatch_id, publish_after, held, schedule_id,
                       trace_parent, priority, concurrency_key, concurrency_limit, wait_reason, surplus)
    SELECT t.id, $2, $3, $4, $5::jsonb, {QUEUED}, $6, $7, $8, t.idx, $9, $10, t.dispatch_id,
           CASE WHEN t.idx < admitted.dispatchable THEN now() + make_interval(secs => $11)
                ELSE 'infinity'::timestamptz END,
           t.idx >= admitted.dispatchable, $18::uuid, $19, $20, $21, $22,
           (t.idx >= admitted.dispatchable)::int,  -- WAIT_REASON_SLOT_SHARE when held
           t.idx >= admitted.shared AND t.idx < admitted.dispatchable
    FROM unnest($1::uuid[], $12::int[], $13::uuid[]) AS t(id, idx, dispatch_id), admitted
    ON CONFLICT (owner_id, request_id, replica_index) DO NOTHING
    RETURNING {TASK_COLUMNS}, held, trace_parent
),
guard AS (
    SELECT CASE WHEN count(*) <> cardinality($1::uuid[]) THEN rt_refuse('request_id used before') END
    FROM inserted
)
SELECT inserted.* FROM inserted, guard ORDER BY replica_index
"""

# A delayed submission: the same statement, but its replicas are SCHEDULED until run_at ($23, or now() plus $11
# ms), never published by anyone but the due publisher (publish_after is infinity), and admitted against the
# stored-task limit and the rate only ($14, the active limit, is passed as 0: they are not active until due).
# Their first history row (none -> SCHEDULED) is stored, as the view derives a none -> QUEUED one otherwise.
# The insert trigger of migration 0009 wakes the due publishers at commit.
_INSERT_SCHEDULED = f"""
WITH admitted AS (SELECT {_ADMIT} AS lanes),
inserted AS (
    INSERT INTO tasks (id, owner_id, name, kind, payload, status, max_attempts, request_id, batch_id,
                       replica_index, workload_ms, max_runtime_ms, dispatch_id, publish_after, held, schedule_id,
                       trace_parent, priority, concurrency_key, concurrency_limit, run_at)
    SELECT t.id, $2, $3, $4, $5::jsonb, {SCHEDULED}, $6, $7, $8, t.idx, $9, $10, t.dispatch_id,
           'infinity'::timestamptz, false, $18::uuid, $19, $20, $21, $22,
           coalesce($23::timestamptz, now() + make_interval(secs => $11 / 1000.0))
    FROM unnest($1::uuid[], $12::int[], $13::uuid[]) AS t(id, idx, dispatch_id), admitted
    ON CONFLICT (owner_id, request_id, replica_index) DO NOTHING
    RETURNING {TASK_COLUMNS}, held, trace_parent
),
recorded AS (
    INSERT INTO {HISTORY_TABLE} ({HISTORY_COLUMNS})
    SELECT id, version, NULL, status, attempt, worker_id, fence, 'submitted' FROM inserted
),
guard AS (
    SELECT CASE WHEN count(*) <> cardinality($1::uuid[]) THEN rt_refuse('request_id used before') END
    FROM inserted
)
SELECT inserted.* FROM inserted, guard ORDER BY replica_index
"""


async def _insert_submission(
    pool: asyncpg.Pool,
    owner_id: str,
    spec: Submission,
    batch_id: str,
    ids: list[str],
    limits: UserLimits,
    trace_parent: str | None,
) -> list[asyncpg.Record]:
    start = spec.start
    max_active, max_stored, rate_per_s, burst = _limit_args(limits)
    # $11: the publication grace of a task to dispatch now, or the delay (ms) of a delayed one, whose run_at is $23.
    timing: float = PUBLISH_GRACE_S
    scheduled: tuple[Any, ...] = ()
    if start is not None:
        max_active = 0  # not active until due: the due publisher admits it then (transitions.due)
        timing, scheduled = start.delay_ms, (start.run_at,)
    try:
        rows = await pool.fetch(
            _INSERT_SUBMISSION if start is None else _INSERT_SCHEDULED,
            ids,
            owner_id,
            spec.name,
            spec.kind,
            json.dumps(spec.payload),
            spec.max_attempts,
            spec.request_id,
            batch_id,
            spec.workload_ms,
            spec.max_runtime_ms,
            timing,
            list(range(spec.replicas)),
            [str(uuid.uuid4()) for _ in ids],
            max_active,
            max_stored,
            rate_per_s,
            burst,
            spec.schedule_id,
            trace_parent,
            spec.priority,
            spec.concurrency_key,
            spec.concurrency_limit,
            *scheduled,
        )
    except asyncpg.PostgresError as exc:
        if exc.sqlstate == _REFUSED:
            raise _SubmissionExists from exc
        raise
    if len(rows) != spec.replicas:
        # Nothing inserted (every replica existed): the join may then end before the guard is evaluated.
        raise _SubmissionExists
    return list(rows)


def _limit_args(limits: UserLimits) -> tuple[int, int, float, int]:
    return limits.max_active_tasks, limits.max_stored_tasks, limits.submit_rate_per_s, limits.submit_burst


# -- cancel --------------------------------------------------------------------------------------------
@dataclass
class CancelResult:
    rows: list[asyncpg.Record]
    changes: list[TaskChange]
    to_stop: list[RunningRef]


# Queued or scheduled → CANCELLED (never started, so never to run), running → CANCELLING, with history, in one
# autocommit statement. Rows are locked in id order, as everywhere else, so concurrent batches cannot deadlock.
# Returns every matching row as it was
# ("before") and every changed row as it now is ("after").
_CANCEL = f"""
WITH target AS (
    SELECT {{columns}} FROM tasks WHERE owner_id = $1 AND {{match}} ORDER BY id FOR UPDATE
),
changed AS (
    UPDATE tasks SET
        status = CASE WHEN target.status = {RUNNING} THEN {CANCELLING} ELSE {CANCELLED} END,
        finished_at = CASE WHEN target.status = {RUNNING} THEN tasks.finished_at ELSE now() END,
        error = CASE target.status WHEN {QUEUED} THEN 'cancelled while queued'
                                   WHEN {SCHEDULED} THEN 'cancelled while scheduled' ELSE tasks.error END
    FROM target WHERE tasks.id = target.id AND target.status IN ({QUEUED}, {RUNNING}, {SCHEDULED})
    RETURNING {{qualified}}
),
recorded AS (
    INSERT INTO {HISTORY_TABLE} ({HISTORY_COLUMNS})
    SELECT changed.id, changed.version, target.status, changed.status, changed.attempt, changed.worker_id,
           changed.fence, 'cancel requested'
    FROM changed JOIN target ON target.id = changed.id
)
SELECT false AS after, * FROM target
UNION ALL
SELECT true AS after, * FROM changed
"""
_WHOLE = {"columns": TASK_COLUMNS, "qualified": QUALIFIED_TASK_COLUMNS}
_CANCEL_BY = {
    "id": _CANCEL.format(match="id = $2", **_WHOLE),
    "batch_id": _CANCEL.format(match=in_batch("$1", "$2::uuid"), **_WHOLE),
    # A bulk cancel (up to 500 tasks) returns summaries: its rows make events and stop commands only, and the
    # payloads (up to 64 KiB each) would travel for nothing.
    "ids": _CANCEL.format(match="id = ANY($2::uuid[])", columns=SUMMARY_COLUMNS, qualified=QUALIFIED_SUMMARY_COLUMNS),
}


async def cancel(
    pool: asyncpg.Pool,
    owner_id: str,
    *,
    task_id: str | None = None,
    batch_id: str | None = None,
    task_ids: list[str] | None = None,
) -> CancelResult:
    """Queued or scheduled → CANCELLED at once; running → CANCELLING (the caller pushes the stop to the worker).

    Cancelling a cancelling or cancelled task again is harmless; a finished one is FAILED_PRECONDITION
    (for a single task; a batch, or a list of ids (a bulk cancel), skips its finished tasks).
    """
    column, value = ("id", task_id) if task_id else ("batch_id", batch_id)
    found: list[asyncpg.Record]
    if task_ids is not None:
        found = await pool.fetch(_CANCEL_BY["ids"], owner_id, task_ids)
    else:
        found = await pool.fetch(_CANCEL_BY[column], owner_id, value)
    rows = sorted((r for r in found if not r["after"]), key=lambda r: r["replica_index"])
    if not rows:
        return CancelResult([], [], [])
    if task_id and rows[0]["status"] in TERMINAL and rows[0]["status"] != CANCELLED:
        check_transition(rows[0]["status"], CANCELLED, "cancel")
    updated = {str(r["id"]): r for r in found if r["after"]}
    # Queued tasks are cancelled now (never ran); running ones end when their worker reports or times out.
    task_metrics.ended((r for r in updated.values() if r["status"] == CANCELLED), ran=False)
    previous = {str(r["id"]): r["status"] for r in rows}
    changes = [change_for(r, previous[i]) for i, r in updated.items()]
    to_stop = [
        RunningRef(r["worker_id"], str(r["id"]), r["fence"]) for r in rows if r["status"] in (RUNNING, CANCELLING)
    ]
    final = [updated.get(str(r["id"]), r) for r in rows]
    return CancelResult(final, changes, to_stop)


# -- retry ---------------------------------------------------------------------------------------------
# A failed, timed-out or cancelled task back to QUEUED with a fresh dispatch, history included, in one
# statement; the row as it was comes back too, so a refusal can name the status it found. A retried task is
# active again and counts as a submission (rt_admit, only for a task that can be retried): it may be held
# for the owner's slot cap like a new one. With a delay ($10 ms, above 0) it is SCHEDULED instead, until
# now() plus the delay: admitted as a delayed submission is (not active until due, $6 is not applied), and the
# due publishers are woken (rt_wake_due, migration 0009).
_RETRY = f"""
WITH target AS (SELECT id, status FROM tasks WHERE id = $1 AND owner_id = $2 FOR UPDATE),
admitted AS (
    SELECT a.lanes[1] AS dispatchable, a.lanes[2] AS shared FROM (
        SELECT rt_admit_lanes($2, '', 1, 0, CASE WHEN $10::bigint > 0 THEN 0 ELSE $6 END, $7, $8, $9) AS lanes
        FROM target WHERE target.status = ANY($5::smallint[])
    ) AS a
),
timing AS (
    SELECT $10::bigint > 0 AS delayed, now() + make_interval(secs => $10::bigint / 1000.0) AS run_at
),
changed AS (
    UPDATE tasks SET status = CASE WHEN timing.delayed THEN {SCHEDULED} ELSE {QUEUED} END,
        attempt = 0, dead_lettered = false, error = '', progress = 0,
        result = NULL, started_at = NULL, finished_at = NULL, worker_id = '', dispatch_id = $3,
        published = false, published_at = NULL, held = NOT timing.delayed AND admitted.dispatchable < 1,
        wait_reason = (NOT timing.delayed AND admitted.dispatchable < 1)::int,
        surplus = NOT timing.delayed AND admitted.dispatchable >= 1 AND admitted.shared < 1,
        run_at = CASE WHEN timing.delayed THEN timing.run_at END,
        publish_after = CASE WHEN timing.delayed OR admitted.dispatchable < 1 THEN 'infinity'::timestamptz
                             ELSE now() + make_interval(secs => $4) END
    FROM target, admitted, timing WHERE tasks.id = target.id
    RETURNING {QUALIFIED_TASK_COLUMNS}, tasks.held, tasks.trace_parent, target.status AS before
),
recorded AS ({history_of("changed", "before", "'retry requested'")})
SELECT target.status AS found, changed.*,
    CASE WHEN changed.status = {SCHEDULED} THEN rt_wake_due(changed.run_at) END AS woken
FROM target LEFT JOIN changed ON true
"""


async def retry(
    pool: asyncpg.Pool, owner_id: str, task_id: str, limits: UserLimits = DEFAULT_LIMITS, delay_ms: int = 0
) -> tuple[asyncpg.Record, TaskChange] | None:
    """A failed, timed-out or cancelled task starts over with a fresh set of attempts: at once, or after
    delay_ms (SCHEDULED until then).

    The row comes back with `held`: True when it waits for the owner's slot cap (not to be dispatched now).
    """
    row = await pool.fetchrow(
        _RETRY,
        task_id,
        owner_id,
        str(uuid.uuid4()),
        PUBLISH_GRACE_S,
        sorted(RETRYABLE),
        *_limit_args(limits),
        delay_ms,
    )
    if row is None:
        return None
    if row["id"] is None:
        # Not retryable (the table allows RUNNING -> QUEUED and SCHEDULED -> QUEUED, but for other reasons).
        raise InvalidTransition(row["found"], SCHEDULED if delay_ms > 0 else QUEUED, "retry")
    return row, change_for(row, row["before"])


# -- delete --------------------------------------------------------------------------------------------
# Not transitions, but they end a task's story: its history rows go with it (trigger, migration 0004).
async def delete(pool: asyncpg.Pool, owner_id: str, task_id: str) -> TaskChange | None:
    row = await pool.fetchrow(
        f"WITH target AS (SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1 AND owner_id = $2 FOR UPDATE), "
        f"gone AS (DELETE FROM tasks USING target WHERE tasks.id = target.id "
        f"AND target.status <> ALL($3::smallint[]) RETURNING tasks.id) "
        "SELECT target.*, gone.id IS NOT NULL AS deleted FROM target LEFT JOIN gone ON true",
        task_id,
        owner_id,
        sorted(UNFINISHED),
    )
    if row is None:
        return None
    if not row["deleted"]:
        raise_active(row["status"])
    return change_for(row, row["status"], deleted=True)


def raise_active(status: int) -> None:
    raise FailedPrecondition(f"cannot delete: task is {status_name(status)}; cancel it first")


# One page of the owner's finished tasks, oldest first, deleted in one autocommit statement. SKIP LOCKED: a
# task some other statement is changing right now (a retry) is left alone rather than waited for.
_CLEAR_PAGE = f"""
WITH page AS (
    SELECT id FROM tasks WHERE owner_id = $1 AND status = ANY($2::smallint[])
    ORDER BY created_at, id LIMIT $3 FOR UPDATE SKIP LOCKED
)
DELETE FROM tasks USING page WHERE tasks.id = page.id RETURNING {QUALIFIED_TASK_COLUMNS}
"""


async def clear_history(pool: asyncpg.Pool, owner_id: str, page_size: int) -> AsyncIterator[list[TaskChange]]:
    """The owner's finished tasks deleted page by page, each page committed on its own and yielded for the
    caller to announce before the next is deleted: no call holds one huge transaction, nor publishes one
    huge burst of events. Ends with the first page that comes back short.
    """
    while True:
        rows = await pool.fetch(_CLEAR_PAGE, owner_id, sorted(TERMINAL), page_size)
        if rows:
            yield [change_for(r, r["status"], deleted=True) for r in rows]
        if len(rows) < page_size:
            return
