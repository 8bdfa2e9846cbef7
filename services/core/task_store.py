"""Task rows in PostgreSQL: every query of the gateway filters by owner; every status change goes through
check_transition, bumps version, writes task_history and yields a TaskChange to publish after commit.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from resilienttask.v1 import task_pb2
from services.core.errors import FailedPrecondition
from services.core.events import TaskChange
from services.core.task_model import (
    ACTIVE,
    CANCELLED,
    CANCELLING,
    QUALIFIED_TASK_COLUMNS,
    QUEUED,
    RETRYABLE,
    RUNNING,
    TASK_COLUMNS,
    TERMINAL,
    check_transition,
    row_to_task,
    status_name,
)

# The sweeper publishes a fresh submission only if its gateway did not within this delay.
PUBLISH_GRACE_S = 5.0


@dataclass(frozen=True)
class Submission:
    """A validated SubmitTask request."""

    name: str
    kind: str
    payload: dict[str, Any]
    workload_ms: int
    max_runtime_ms: int
    replicas: int
    max_attempts: int
    request_id: str


@dataclass(frozen=True)
class HistoryEntry:
    task_id: str
    version: int
    from_status: int | None
    to_status: int
    attempt: int
    worker_id: str = ""
    fence: int = 0
    detail: str = ""


@dataclass(frozen=True)
class RunningRef:
    """A task some worker runs, for pushing a cancel command to that worker."""

    worker_id: str
    task_id: str
    fence: int


HISTORY_COLUMNS = "task_id, version, from_status, to_status, attempt, worker_id, fence, detail"


def history_of(relation: str, from_status: str, detail: str) -> str:
    """SQL recording one history row per row of `relation` (a CTE returning task columns) in the same statement."""
    return (
        f"INSERT INTO task_history ({HISTORY_COLUMNS}) "
        f"SELECT id, version, {from_status}, status, attempt, worker_id, fence, {detail} FROM {relation}"
    )


async def insert_history(conn: asyncpg.Connection, entries: Sequence[HistoryEntry]) -> None:
    if not entries:
        return
    await conn.execute(
        f"INSERT INTO task_history ({HISTORY_COLUMNS}) "
        "SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::smallint[], $4::smallint[], $5::int[], "
        "$6::text[], $7::bigint[], $8::text[])",
        [e.task_id for e in entries],
        [e.version for e in entries],
        [e.from_status for e in entries],
        [e.to_status for e in entries],
        [e.attempt for e in entries],
        [e.worker_id for e in entries],
        [e.fence for e in entries],
        [e.detail for e in entries],
    )


def history_for(row: asyncpg.Record, from_status: int | None, detail: str = "") -> HistoryEntry:
    return HistoryEntry(
        task_id=str(row["id"]),
        version=row["version"],
        from_status=from_status,
        to_status=row["status"],
        attempt=row["attempt"],
        worker_id=row["worker_id"],
        fence=row["fence"],
        detail=detail,
    )


def change_for(row: asyncpg.Record, previous_status: int, deleted: bool = False) -> TaskChange:
    return TaskChange(str(row["owner_id"]), row_to_task(row), previous_status, deleted)


# -- submission ---------------------------------------------------------------------------------------
async def submit(pool: asyncpg.Pool, owner_id: str, spec: Submission) -> tuple[list[asyncpg.Record], bool]:
    """Insert every replica in one transaction; a repeated request_id returns the first request's rows.

    Returns the rows (by replica index) and whether this call created them.
    """
    batch_id = str(uuid.uuid4())
    ids = [str(uuid.uuid4()) for _ in range(spec.replicas)]
    try:
        return await _insert_submission(pool, owner_id, spec, batch_id, ids), True
    except _SubmissionExists:
        pass
    existing = await pool.fetch(
        f"SELECT {TASK_COLUMNS} FROM tasks WHERE owner_id = $1 AND request_id = $2 ORDER BY replica_index",
        owner_id,
        spec.request_id,
    )
    return list(existing), False


class _SubmissionExists(Exception):
    """Some replica of this request_id is already stored: the statement rolled back."""


# Refusal raised by rt_refuse() (migration 0003).
_REFUSED = "RT001"

# Every replica and its history in one autocommit statement (one round trip, one commit). ON CONFLICT skips
# replicas of a request_id used before; when some were inserted all the same, the guard refuses the
# statement, so nothing of it is kept. When none was, the statement returns no row.
_INSERT_SUBMISSION = f"""
WITH inserted AS (
    INSERT INTO tasks (id, owner_id, name, kind, payload, status, max_attempts, request_id, batch_id,
                       replica_index, workload_ms, max_runtime_ms, dispatch_id, publish_after)
    SELECT t.id, $2, $3, $4, $5::jsonb, {QUEUED}, $6, $7, $8, t.idx, $9, $10, t.dispatch_id,
           now() + make_interval(secs => $11)
    FROM unnest($1::uuid[], $12::int[], $13::uuid[]) AS t(id, idx, dispatch_id)
    ON CONFLICT (owner_id, request_id, replica_index) DO NOTHING
    RETURNING {TASK_COLUMNS}
),
recorded AS ({history_of("inserted", "NULL", "'submitted'")}),
guard AS (
    SELECT CASE WHEN count(*) <> cardinality($1::uuid[]) THEN rt_refuse('request_id used before') END
    FROM inserted
)
SELECT inserted.* FROM inserted, guard ORDER BY replica_index
"""


async def _insert_submission(
    pool: asyncpg.Pool, owner_id: str, spec: Submission, batch_id: str, ids: list[str]
) -> list[asyncpg.Record]:
    try:
        rows = await pool.fetch(
            _INSERT_SUBMISSION,
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
            PUBLISH_GRACE_S,
            list(range(spec.replicas)),
            [str(uuid.uuid4()) for _ in ids],
        )
    except asyncpg.PostgresError as exc:
        if exc.sqlstate == _REFUSED:
            raise _SubmissionExists from exc
        raise
    if len(rows) != spec.replicas:
        # Nothing inserted (every replica existed): the join may then end before the guard is evaluated.
        raise _SubmissionExists
    return list(rows)


async def mark_published(pool: asyncpg.Pool, task_ids: Sequence[str], entry_ids: Sequence[str]) -> None:
    """Record that the entries are in the stream, so the sweeper leaves them alone.

    Not a transition, so the commit does not wait for the disk: if a crash loses this update, the sweeper
    publishes the task again and fencing makes the duplicate entry harmless.
    """
    # One autocommit statement; set_config(..., true) lasts until its own commit. Locks are taken in id
    # order, like every other multi-row change, so this never deadlocks with them.
    await pool.execute(
        "WITH cfg AS (SELECT set_config('synchronous_commit', 'off', true)), "
        "t AS (SELECT * FROM unnest($1::uuid[], $2::text[]) AS u(id, entry_id)), "
        "locked AS (SELECT tasks.id FROM tasks JOIN t ON tasks.id = t.id WHERE tasks.status = 1 "
        "ORDER BY tasks.id FOR UPDATE OF tasks) "
        "UPDATE tasks SET published = true, published_at = now(), entry_id = t.entry_id "
        "FROM cfg, t, locked WHERE tasks.id = t.id AND tasks.id = locked.id",
        list(task_ids),
        list(entry_ids),
    )


# -- reads ---------------------------------------------------------------------------------------------
async def get(pool: asyncpg.Pool, owner_id: str, task_id: str) -> asyncpg.Record | None:
    return await pool.fetchrow(f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1 AND owner_id = $2", task_id, owner_id)


async def list_page(
    pool: asyncpg.Pool,
    owner_id: str,
    *,
    status: int,
    batch_id: str | None,
    limit: int,
    after: tuple[Any, str] | None,
) -> list[asyncpg.Record]:
    """Newest first, keyset-paged on (created_at, id)."""
    clauses = ["owner_id = $1"]
    args: list[Any] = [owner_id]
    if status:
        args.append(status)
        clauses.append(f"status = ${len(args)}")
    if batch_id:
        args.append(batch_id)
        clauses.append(f"batch_id = ${len(args)}")
    if after is not None:
        args.extend(after)
        clauses.append(f"(created_at, id) < (${len(args) - 1}, ${len(args)}::uuid)")
    args.append(limit)
    return list(
        await pool.fetch(
            f"SELECT {TASK_COLUMNS} FROM tasks WHERE {' AND '.join(clauses)} "
            f"ORDER BY created_at DESC, id DESC LIMIT ${len(args)}",
            *args,
        )
    )


async def recent(pool: asyncpg.Pool, owner_id: str, limit: int) -> list[asyncpg.Record]:
    return await list_page(pool, owner_id, status=0, batch_id=None, limit=limit, after=None)


async def stats(pool: asyncpg.Pool, owner_id: str) -> task_pb2.TaskStats:
    rows = await pool.fetch("SELECT status, count(*) AS n FROM tasks WHERE owner_id = $1 GROUP BY status", owner_id)
    return stats_from_counts({r["status"]: r["n"] for r in rows})


def stats_from_counts(counts: dict[int, int]) -> task_pb2.TaskStats:
    def n(status: int) -> int:
        return int(counts.get(status, 0))

    running = n(RUNNING) + n(CANCELLING)
    return task_pb2.TaskStats(
        active=n(QUEUED) + running,
        queued=n(QUEUED),
        running=running,
        succeeded=n(task_pb2.TASK_STATUS_SUCCEEDED),
        failed=n(task_pb2.TASK_STATUS_FAILED),
        cancelled=n(CANCELLED),
        timed_out=n(task_pb2.TASK_STATUS_TIMED_OUT),
    )


# -- user commands -----------------------------------------------------------------------------------
@dataclass
class CancelResult:
    rows: list[asyncpg.Record]
    changes: list[TaskChange]
    to_stop: list[RunningRef]


# Queued → CANCELLED, running → CANCELLING, with history, in one autocommit statement. Rows are locked in id
# order, as everywhere else, so concurrent batches cannot deadlock. Returns every matching row as it was
# ("before") and every changed row as it now is ("after").
_CANCEL = f"""
WITH target AS (
    SELECT {TASK_COLUMNS} FROM tasks WHERE owner_id = $1 AND {{column}} = $2 ORDER BY id FOR UPDATE
),
changed AS (
    UPDATE tasks SET
        status = CASE WHEN target.status = {QUEUED} THEN {CANCELLED} ELSE {CANCELLING} END,
        finished_at = CASE WHEN target.status = {QUEUED} THEN now() ELSE tasks.finished_at END,
        error = CASE WHEN target.status = {QUEUED} THEN 'cancelled while queued' ELSE tasks.error END,
        version = tasks.version + 1
    FROM target WHERE tasks.id = target.id AND target.status IN ({QUEUED}, {RUNNING})
    RETURNING {QUALIFIED_TASK_COLUMNS}
),
recorded AS (
    INSERT INTO task_history ({HISTORY_COLUMNS})
    SELECT changed.id, changed.version, target.status, changed.status, changed.attempt, changed.worker_id,
           changed.fence, 'cancel requested'
    FROM changed JOIN target ON target.id = changed.id
)
SELECT false AS after, * FROM target
UNION ALL
SELECT true AS after, * FROM changed
"""
_CANCEL_BY = {column: _CANCEL.format(column=column) for column in ("id", "batch_id")}


async def cancel(
    pool: asyncpg.Pool, owner_id: str, *, task_id: str | None = None, batch_id: str | None = None
) -> CancelResult:
    """Queued → CANCELLED at once; running → CANCELLING (the caller pushes the stop to the worker).

    Cancelling a cancelling or cancelled task again is harmless; a finished one is FAILED_PRECONDITION
    (for a single task; a batch skips its finished tasks).
    """
    column, value = ("id", task_id) if task_id else ("batch_id", batch_id)
    found = await pool.fetch(_CANCEL_BY[column], owner_id, value)
    rows = sorted((r for r in found if not r["after"]), key=lambda r: r["replica_index"])
    if not rows:
        return CancelResult([], [], [])
    if task_id and rows[0]["status"] in TERMINAL and rows[0]["status"] != CANCELLED:
        check_transition(rows[0]["status"], CANCELLED, "cancel")
    updated = {str(r["id"]): r for r in found if r["after"]}
    previous = {str(r["id"]): r["status"] for r in rows}
    changes = [change_for(r, previous[i]) for i, r in updated.items()]
    to_stop = [
        RunningRef(r["worker_id"], str(r["id"]), r["fence"]) for r in rows if r["status"] in (RUNNING, CANCELLING)
    ]
    final = [updated.get(str(r["id"]), r) for r in rows]
    return CancelResult(final, changes, to_stop)


async def retry(pool: asyncpg.Pool, owner_id: str, task_id: str) -> tuple[asyncpg.Record, TaskChange] | None:
    """A failed, timed-out or cancelled task starts over with a fresh set of attempts."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "SELECT status FROM tasks WHERE id = $1 AND owner_id = $2 FOR UPDATE", task_id, owner_id
        )
        if row is None:
            return None
        if row["status"] not in RETRYABLE:
            check_transition(row["status"], QUEUED, "retry")
        updated = await conn.fetchrow(
            f"UPDATE tasks SET status = {QUEUED}, attempt = 0, dead_lettered = false, error = '', progress = 0, "
            "result = NULL, started_at = NULL, finished_at = NULL, worker_id = '', version = version + 1, "
            "dispatch_id = $2, published = false, published_at = NULL, "
            "publish_after = now() + make_interval(secs => $3) "
            f"WHERE id = $1 RETURNING {TASK_COLUMNS}",
            task_id,
            str(uuid.uuid4()),
            PUBLISH_GRACE_S,
        )
        assert updated is not None
        await insert_history(conn, [history_for(updated, row["status"], "retry requested")])
    return updated, change_for(updated, row["status"])


async def delete(pool: asyncpg.Pool, owner_id: str, task_id: str) -> TaskChange | None:
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1 AND owner_id = $2 FOR UPDATE", task_id, owner_id
        )
        if row is None:
            return None
        if row["status"] in ACTIVE:
            raise_active(row["status"])
        await conn.execute("DELETE FROM tasks WHERE id = $1", task_id)
    return change_for(row, row["status"], deleted=True)


def raise_active(status: int) -> None:
    raise FailedPrecondition(f"cannot delete: task is {status_name(status)}; cancel it first")


async def clear_history(pool: asyncpg.Pool, owner_id: str) -> list[TaskChange]:
    rows = await pool.fetch(
        f"DELETE FROM tasks WHERE owner_id = $1 AND status = ANY($2::smallint[]) RETURNING {TASK_COLUMNS}",
        owner_id,
        sorted(TERMINAL),
    )
    return [change_for(r, r["status"], deleted=True) for r in rows]
