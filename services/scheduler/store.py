"""The scheduler's task transitions: start (fenced leases), finish, progress and the sweeps.

All of them run in one transaction per batch with row locks, so concurrent schedulers and workers
never both win the same task.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
from google.protobuf import json_format

from resilienttask.v1 import task_pb2
from resilienttask.worker.v1 import worker_pb2
from services.core.events import TaskChange
from services.core.task_model import (
    CANCELLED,
    CANCELLING,
    FAILED,
    QUALIFIED_TASK_COLUMNS,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    TASK_COLUMNS,
    TERMINAL,
    TIMED_OUT,
    check_transition,
    row_to_task,
    rows_to_tasks,
)
from services.core.task_store import HistoryEntry, RunningRef, change_for, history_for, history_of, insert_history

SUPERSEDED = "superseded"
# The longest error text an outcome may store.
MAX_ERROR_CHARS = 4000
ALREADY_FINISHED = "already finished"
RUN = worker_pb2.START_DECISION_RUN
SKIP = worker_pb2.START_DECISION_SKIP
DEFER = worker_pb2.START_DECISION_DEFER


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter between attempts."""

    base_ms: int = 1000
    max_ms: int = 60_000

    def delay_s(self, attempt: int) -> float:
        ceiling = min(self.max_ms, self.base_ms * 2 ** max(0, attempt - 1))
        return ceiling * random.uniform(0.5, 1.0) / 1000


@dataclass
class StartOutcome:
    results: list[worker_pb2.StartResult]
    changes: list[TaskChange]
    superseded: list[RunningRef]


def _skip(task_id: str, reason: str) -> worker_pb2.StartResult:
    return worker_pb2.StartResult(task_id=task_id, decision=SKIP, reason=reason)


# The common start in one autocommit statement: a queued task whose current dispatch this entry carries.
# Rows are locked in id order first, so concurrent batches cannot deadlock.
_FAST_START = f"""
WITH t AS (SELECT * FROM unnest($2::uuid[], $3::uuid[], $4::text[]) AS u(id, dispatch_id, entry_id)),
locked AS (
    SELECT tasks.id FROM tasks JOIN t ON tasks.id = t.id
    WHERE tasks.status = {QUEUED} AND tasks.dispatch_id = t.dispatch_id ORDER BY tasks.id FOR UPDATE OF tasks
),
started AS (
    UPDATE tasks SET status = {RUNNING}, attempt = attempt + 1, fence = nextval('fence_seq'), worker_id = $1,
        entry_id = t.entry_id, started_at = now(), progress = 0, error = '', version = version + 1
    FROM t, locked WHERE tasks.id = t.id AND tasks.id = locked.id
    RETURNING {QUALIFIED_TASK_COLUMNS}
),
recorded AS ({history_of("started", str(QUEUED), "'started'")})
SELECT * FROM started
"""


async def start_batch(pool: asyncpg.Pool, worker_id: str, items: Sequence[worker_pb2.StartItem]) -> StartOutcome:
    """Decide for each entry whether this worker runs the task, and record the new attempts.

    Fresh dispatches of queued tasks (nearly every entry) start in one statement; the rest are decided one
    by one under row locks.
    """
    first: dict[str, worker_pb2.StartItem] = {}
    for item in items:
        if _is_uuid(item.task_id) and _is_uuid(item.dispatch_id):
            first.setdefault(item.task_id, item)
    started: dict[str, asyncpg.Record] = {}
    if first:
        rows = await pool.fetch(
            _FAST_START,
            worker_id,
            list(first),
            [i.dispatch_id for i in first.values()],
            [i.entry_id for i in first.values()],
        )
        started = {str(r["id"]): r for r in rows}
    rest = [item for item in items if first.get(item.task_id) is not item or item.task_id not in started]
    checked = await _start_checked(pool, worker_id, rest) if rest else StartOutcome([], [], [])
    tasks = dict(zip(started, rows_to_tasks(started.values()), strict=True))
    later = iter(checked.results)
    results = [
        _run(started[item.task_id], tasks[item.task_id])
        if first.get(item.task_id) is item and item.task_id in started
        else next(later)
        for item in items
    ]
    changes = [TaskChange(str(row["owner_id"]), tasks[i], QUEUED) for i, row in started.items()] + checked.changes
    return StartOutcome(results, changes, checked.superseded)


def _run(row: asyncpg.Record, task: task_pb2.Task) -> worker_pb2.StartResult:
    return worker_pb2.StartResult(task_id=str(row["id"]), decision=RUN, task=task, fence=row["fence"])


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


async def _start_checked(pool: asyncpg.Pool, worker_id: str, items: Sequence[worker_pb2.StartItem]) -> StartOutcome:
    """Decide for each entry whether this worker runs the task, and record the new attempts.

    Only the entry carrying the task's current dispatch_id may start it. A RUNNING task is taken over
    only through the very entry that started it (XAUTOCLAIM gave it to us because its worker stopped
    heartbeating); any other entry for it is a duplicate publish and is skipped.
    """
    ids = [item.task_id for item in items]
    async with pool.acquire() as conn, conn.transaction():
        rows = {
            str(r["id"]): r
            for r in await conn.fetch(
                f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE",
                _valid_uuids(ids),
            )
        }
        decisions: list[tuple[worker_pb2.StartItem, str, str]] = []  # (item, action, detail)
        for item in items:
            row = rows.get(item.task_id)
            decisions.append((item, *_decide(row, item, worker_id)))
        results: list[worker_pb2.StartResult] = []
        changes: list[TaskChange] = []
        history: list[HistoryEntry] = []
        superseded: list[RunningRef] = []
        runs: dict[str, worker_pb2.StartItem] = {}
        for item, action, _detail in decisions:
            row = rows.get(item.task_id)
            if action == "run" and row is not None and item.task_id not in runs:
                check_transition(row["status"], RUNNING)
                runs[item.task_id] = item
        started = await _start_attempts(conn, worker_id, list(runs.values()))
        for item, action, detail in decisions:
            row = rows.get(item.task_id)
            new = started.pop(item.task_id, None)
            if action == "run" and row is not None and new is not None:
                if row["status"] == RUNNING:
                    superseded.append(RunningRef(row["worker_id"], item.task_id, row["fence"]))
                history.append(history_for(new, row["status"], detail))
                changes.append(change_for(new, row["status"]))
                results.append(
                    worker_pb2.StartResult(
                        task_id=item.task_id, decision=RUN, task=row_to_task(new), fence=new["fence"]
                    )
                )
            elif action == "run":
                results.append(_skip(item.task_id, "duplicate entry"))
            elif action in ("fail", "cancel") and row is not None:
                target = FAILED if action == "fail" else CANCELLED
                check_transition(row["status"], target)
                new = await conn.fetchrow(
                    "UPDATE tasks SET status = $2::smallint, dead_lettered = $3, error = $4, finished_at = now(), "
                    f"version = version + 1 WHERE id = $1 RETURNING {TASK_COLUMNS}",
                    item.task_id,
                    target,
                    target == FAILED,
                    detail,
                )
                assert new is not None
                history.append(history_for(new, row["status"], detail))
                changes.append(change_for(new, row["status"]))
                results.append(_skip(item.task_id, detail))
            elif action == "resume" and row is not None:
                # Announce the attempt again: the crash that lost our reply may also have lost its event.
                changes.append(change_for(row, row["status"]))
                results.append(
                    worker_pb2.StartResult(
                        task_id=item.task_id, decision=RUN, task=row_to_task(row), fence=row["fence"]
                    )
                )
            elif action == "defer":
                results.append(worker_pb2.StartResult(task_id=item.task_id, decision=DEFER, reason=detail))
            else:
                results.append(_skip(item.task_id, detail))
        await insert_history(conn, history)
    return StartOutcome(results, changes, superseded)


async def _start_attempts(
    conn: asyncpg.Connection, worker_id: str, items: Sequence[worker_pb2.StartItem]
) -> dict[str, asyncpg.Record]:
    """One statement records every new attempt of the batch (each with its own fence)."""
    if not items:
        return {}
    rows = await conn.fetch(
        f"UPDATE tasks SET status = {RUNNING}, attempt = attempt + 1, fence = nextval('fence_seq'), "
        "worker_id = $1, entry_id = t.entry_id, started_at = now(), progress = 0, error = '', "
        "version = version + 1 FROM unnest($2::uuid[], $3::text[]) AS t(id, entry_id) "
        f"WHERE tasks.id = t.id RETURNING {QUALIFIED_TASK_COLUMNS}",
        worker_id,
        [item.task_id for item in items],
        [item.entry_id for item in items],
    )
    return {str(r["id"]): r for r in rows}


def _decide(row: asyncpg.Record | None, item: worker_pb2.StartItem, worker_id: str) -> tuple[str, str]:
    if row is None:
        return "skip", "task not found"
    status = row["status"]
    if str(row["dispatch_id"]) != item.dispatch_id:
        return "skip", "stale dispatch"
    if status == QUEUED:
        return "run", "started"
    if status in TERMINAL:
        return "skip", "already finished"
    # RUNNING or CANCELLING: somebody started this dispatch already.
    if row["worker_id"] == worker_id:
        if item.entry_id and item.entry_id == row["entry_id"]:
            # The worker asks again for the attempt it was given (our reply was lost): same attempt, same fence.
            return "resume", "start reply repeated"
        return "skip", "duplicate entry"
    if not item.entry_id or item.entry_id != row["entry_id"]:
        return "skip", "duplicate entry"
    previous = row["worker_id"] or "a worker"
    if status == CANCELLING:
        return "cancel", f"{previous} stopped while cancelling"
    if row["attempt"] >= row["max_attempts"]:
        return "fail", f"{previous} stopped responding; no attempts left"
    return "run", f"reclaimed from {previous}"


def _valid_uuids(ids: Sequence[str]) -> list[str]:
    valid = []
    for value in ids:
        try:
            valid.append(str(uuid.UUID(value)))
        except ValueError:
            continue
    return valid


# -- finishing ----------------------------------------------------------------------------------------
@dataclass
class FinishOutcome:
    results: list[worker_pb2.FinishResult]
    changes: list[TaskChange]
    requeued: list[str]


def _target(row: asyncpg.Record, outcome: int) -> tuple[int, bool]:
    """(new status, dead_lettered) for an attempt's outcome, given the task's status."""
    if row["status"] == CANCELLING:
        if outcome in (worker_pb2.OUTCOME_SUCCEEDED, worker_pb2.OUTCOME_TIMED_OUT):
            return (SUCCEEDED if outcome == worker_pb2.OUTCOME_SUCCEEDED else TIMED_OUT), False
        return CANCELLED, False
    if outcome == worker_pb2.OUTCOME_SUCCEEDED:
        return SUCCEEDED, False
    if outcome == worker_pb2.OUTCOME_TIMED_OUT:
        return TIMED_OUT, False
    if outcome == worker_pb2.OUTCOME_CANCELLED:
        return CANCELLED, False
    if row["attempt"] < row["max_attempts"]:
        return QUEUED, False
    return FAILED, True


@dataclass(frozen=True)
class _Accepted:
    """An outcome that will be recorded: the task's new status and what goes with it."""

    task_id: str
    target: int
    dead: bool
    error: str
    result_json: str | None
    delay_s: float


# The common finish in one autocommit statement: a success reported with the task's current fence.
_FAST_SUCCESS = f"""
WITH t AS (SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[]) AS u(id, fence, result)),
locked AS (
    SELECT tasks.id FROM tasks JOIN t ON tasks.id = t.id
    WHERE tasks.status = {RUNNING} AND tasks.fence = t.fence ORDER BY tasks.id FOR UPDATE OF tasks
),
finished AS (
    UPDATE tasks SET status = {SUCCEEDED}, result = t.result::jsonb, progress = 1, error = '',
        finished_at = now(), version = version + 1
    FROM t, locked WHERE tasks.id = t.id AND tasks.id = locked.id
    RETURNING {QUALIFIED_TASK_COLUMNS}
),
recorded AS ({history_of("finished", str(RUNNING), "'finished'")})
SELECT * FROM finished
"""


# A cancelled attempt of a running or cancelling task, reported with its current fence, in one statement.
_FAST_CANCELLED = f"""
WITH t AS (SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::text[]) AS u(id, fence, result, error)),
locked AS (
    SELECT tasks.id, tasks.status AS before FROM tasks JOIN t ON tasks.id = t.id
    WHERE tasks.status IN ({RUNNING}, {CANCELLING}) AND tasks.fence = t.fence ORDER BY tasks.id FOR UPDATE OF tasks
),
finished AS (
    UPDATE tasks SET status = {CANCELLED}, dead_lettered = false, result = t.result::jsonb, error = t.error,
        finished_at = now(), version = version + 1
    FROM t, locked WHERE tasks.id = t.id AND tasks.id = locked.id
    RETURNING {QUALIFIED_TASK_COLUMNS}, locked.before
),
recorded AS ({history_of("finished", "before", "CASE WHEN error = '' THEN 'finished' ELSE error END")})
SELECT * FROM finished
"""
# Outcomes recorded in one statement each when the report carries the task's current fence.
_FAST_OUTCOMES = (worker_pb2.OUTCOME_SUCCEEDED, worker_pb2.OUTCOME_CANCELLED)


async def finish_batch(
    pool: asyncpg.Pool, worker_id: str, items: Sequence[worker_pb2.FinishItem], retry: RetryPolicy
) -> FinishOutcome:
    """Record outcomes; a report whose fence is not the task's current one is refused as superseded.

    Successes of running tasks (nearly every report) and cancellations are recorded in one statement each;
    the rest are checked one by one under row locks.
    """
    first: dict[str, worker_pb2.FinishItem] = {}
    for item in items:
        if item.outcome in _FAST_OUTCOMES and _is_uuid(item.task.task_id):
            first.setdefault(item.task.task_id, item)
    succeeded = [i for i in first.values() if i.outcome == worker_pb2.OUTCOME_SUCCEEDED]
    cancelled = [i for i in first.values() if i.outcome == worker_pb2.OUTCOME_CANCELLED]
    # task id -> (the row as recorded, its status before)
    done: dict[str, tuple[asyncpg.Record, int]] = {}
    if succeeded:
        rows = await pool.fetch(
            _FAST_SUCCESS,
            [i.task.task_id for i in succeeded],
            [i.task.fence for i in succeeded],
            [_result_json(i) for i in succeeded],
        )
        done.update({str(r["id"]): (r, RUNNING) for r in rows})
    if cancelled:
        rows = await pool.fetch(
            _FAST_CANCELLED,
            [i.task.task_id for i in cancelled],
            [i.task.fence for i in cancelled],
            [_result_json(i) for i in cancelled],
            [i.error[:MAX_ERROR_CHARS] for i in cancelled],
        )
        done.update({str(r["id"]): (r, r["before"]) for r in rows})
    rest = [item for item in items if first.get(item.task.task_id) is not item or item.task.task_id not in done]
    checked = await _finish_checked(pool, worker_id, rest, retry) if rest else FinishOutcome([], [], [])
    later = iter(checked.results)
    results = [
        worker_pb2.FinishResult(task_id=item.task.task_id, accepted=True)
        if first.get(item.task.task_id) is item and item.task.task_id in done
        else next(later)
        for item in items
    ]
    recorded = [row for row, _ in done.values()]
    changes = [
        TaskChange(str(row["owner_id"]), task, before)
        for (row, before), task in zip(done.values(), rows_to_tasks(recorded), strict=True)
    ] + checked.changes
    return FinishOutcome(results, changes, checked.requeued)


def _result_json(item: worker_pb2.FinishItem) -> str | None:
    return json.dumps(json_format.MessageToDict(item.result)) if item.HasField("result") else None


async def _finish_checked(
    pool: asyncpg.Pool, worker_id: str, items: Sequence[worker_pb2.FinishItem], retry: RetryPolicy
) -> FinishOutcome:
    """Record outcomes; a report whose fence is not the task's current one is refused as superseded."""
    ids = _valid_uuids([item.task.task_id for item in items])
    results: list[worker_pb2.FinishResult] = []
    accepted: dict[str, _Accepted] = {}
    async with pool.acquire() as conn, conn.transaction():
        rows = {
            str(r["id"]): r
            for r in await conn.fetch(
                f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE", ids
            )
        }
        repeated: list[asyncpg.Record] = []
        for item in items:
            task_id = item.task.task_id
            row = rows.get(task_id)
            reason = _refusal(row, item)
            if reason or task_id in accepted:
                results.append(
                    worker_pb2.FinishResult(task_id=task_id, accepted=False, reason=reason or "duplicate report")
                )
                if reason == ALREADY_FINISHED and row is not None:
                    repeated.append(row)
                continue
            assert row is not None
            target, dead = _target(row, item.outcome)
            check_transition(row["status"], target)
            accepted[task_id] = _Accepted(
                task_id=task_id,
                target=target,
                dead=dead,
                error=item.error[:MAX_ERROR_CHARS],
                result_json=_result_json(item),
                delay_s=retry.delay_s(row["attempt"]),
            )
            results.append(worker_pb2.FinishResult(task_id=task_id, accepted=True))
        updated = await _record_outcomes(conn, list(accepted.values()))
        changes = [change_for(updated[i], rows[i]["status"]) for i in accepted]
        # A report repeated for an outcome already recorded: its first reply (and perhaps its event) was lost
        # with a scheduler that died after the commit, so the state is announced again.
        changes += [change_for(row, row["status"]) for row in repeated]
        history = [history_for(updated[i], rows[i]["status"], a.error or "finished") for i, a in accepted.items()]
        await insert_history(conn, history)
    requeued = [i for i, a in accepted.items() if a.target == QUEUED]
    return FinishOutcome(results, changes, requeued)


def _refusal(row: asyncpg.Record | None, item: worker_pb2.FinishItem) -> str:
    """Why an outcome cannot be recorded ("" when it can)."""
    if row is None:
        return "task not found"
    if row["fence"] != item.task.fence:
        return SUPERSEDED
    if row["status"] not in (RUNNING, CANCELLING):
        return ALREADY_FINISHED
    return ""


async def _record_outcomes(conn: asyncpg.Connection, outcomes: Sequence[_Accepted]) -> dict[str, asyncpg.Record]:
    """Two statements at most: failed attempts queued again (with backoff), and finished tasks."""
    requeue = [o for o in outcomes if o.target == QUEUED]
    finish = [o for o in outcomes if o.target != QUEUED]
    updated: dict[str, asyncpg.Record] = {}
    if requeue:
        rows = await conn.fetch(
            f"UPDATE tasks SET status = {QUEUED}, error = t.error, dispatch_id = t.dispatch_id, published = false, "
            "published_at = NULL, publish_after = now() + make_interval(secs => t.delay_s), "
            "version = version + 1 "
            "FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::float8[]) AS t(id, error, dispatch_id, delay_s) "
            f"WHERE tasks.id = t.id RETURNING {QUALIFIED_TASK_COLUMNS}",
            [o.task_id for o in requeue],
            [o.error for o in requeue],
            [str(uuid.uuid4()) for _ in requeue],
            [o.delay_s for o in requeue],
        )
        updated.update({str(r["id"]): r for r in rows})
    if finish:
        rows = await conn.fetch(
            "UPDATE tasks SET status = t.status, dead_lettered = t.dead, error = t.error, result = t.result::jsonb, "
            f"progress = CASE WHEN t.status = {SUCCEEDED} THEN 1 ELSE progress END, finished_at = now(), "
            "version = version + 1 "
            "FROM unnest($1::uuid[], $2::smallint[], $3::bool[], $4::text[], $5::text[]) "
            "AS t(id, status, dead, error, result) "
            f"WHERE tasks.id = t.id RETURNING {QUALIFIED_TASK_COLUMNS}",
            [o.task_id for o in finish],
            [o.target for o in finish],
            [o.dead for o in finish],
            [o.error for o in finish],
            [o.result_json for o in finish],
        )
        updated.update({str(r["id"]): r for r in rows})
    return updated


# -- progress and heartbeats --------------------------------------------------------------------------
async def record_progress(pool: asyncpg.Pool, reports: dict[tuple[str, int], float]) -> list[TaskChange]:
    """Store the latest progress of each (task, fence); reports of superseded attempts change nothing."""
    keys = [key for key in reports if _is_uuid(key[0])]
    if not keys:
        return []
    # SKIP LOCKED: progress is droppable, and never worth waiting for (or deadlocking with) a finish.
    async with pool.acquire() as conn, conn.transaction():
        # Progress is not a transition: its commit need not wait for the disk.
        await conn.execute("SET LOCAL synchronous_commit = off")
        rows = await conn.fetch(
            "WITH t AS (SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::float8[]) AS u(id, fence, progress)), "
            f"locked AS (SELECT tasks.id FROM tasks JOIN t ON tasks.id = t.id WHERE tasks.fence = t.fence "
            f"AND tasks.status IN ({RUNNING}, {CANCELLING}) AND tasks.progress <> t.progress "
            "ORDER BY tasks.id FOR UPDATE OF tasks SKIP LOCKED) "
            "UPDATE tasks SET progress = t.progress, version = version + 1 FROM t, locked "
            "WHERE tasks.id = t.id AND tasks.id = locked.id "
            f"RETURNING {QUALIFIED_TASK_COLUMNS}",
            [k[0] for k in keys],
            [k[1] for k in keys],
            [max(0.0, min(1.0, reports[k])) for k in keys],
        )
    return [change_for(r, r["status"]) for r in rows]


async def stops_for_held(pool: asyncpg.Pool, held: Sequence[worker_pb2.HeldTask]) -> list[tuple[str, int, str]]:
    """For tasks a worker says it runs: which it must stop, and why (superseded, or cancel requested)."""
    if not held:
        return []
    rows = await pool.fetch(
        "SELECT id, status, fence FROM tasks WHERE id = ANY($1::uuid[])", _valid_uuids([h.task_id for h in held])
    )
    current = {str(r["id"]): r for r in rows}
    stops = []
    for task in held:
        row = current.get(task.task_id)
        if row is None or row["fence"] != task.fence or row["status"] in TERMINAL or row["status"] == QUEUED:
            stops.append((task.task_id, task.fence, SUPERSEDED))
        elif row["status"] == CANCELLING:
            stops.append((task.task_id, task.fence, "cancelled"))
    return stops


# -- sweeps -------------------------------------------------------------------------------------------
async def due_for_publish(pool: asyncpg.Pool, limit: int) -> list[asyncpg.Record]:
    """Queued tasks nobody published: retry backoffs that are due, or submissions made while Redis was down."""
    return list(
        await pool.fetch(
            f"SELECT {TASK_COLUMNS} FROM tasks WHERE status = {QUEUED} AND NOT published "
            "AND publish_after <= now() ORDER BY publish_after LIMIT $1",
            limit,
        )
    )


async def published_before(pool: asyncpg.Pool, age_s: float, limit: int) -> list[asyncpg.Record]:
    """Queued, published tasks older than age_s, to check that their entry still exists."""
    return list(
        await pool.fetch(
            f"SELECT {TASK_COLUMNS} FROM tasks WHERE status = {QUEUED} AND published "
            "AND published_at < now() - make_interval(secs => $1) ORDER BY published_at LIMIT $2",
            age_s,
            limit,
        )
    )


async def time_out_abandoned(pool: asyncpg.Pool, grace_s: float) -> list[TaskChange]:
    """Running tasks past max_runtime + grace: their worker is gone and nobody took over."""
    changes: list[TaskChange] = []
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            f"SELECT {TASK_COLUMNS} FROM tasks WHERE status IN ({RUNNING}, {CANCELLING}) "
            "AND started_at + make_interval(secs => max_runtime_ms / 1000.0 + $1) < now() "
            "ORDER BY id LIMIT 500 FOR UPDATE SKIP LOCKED",
            grace_s,
        )
        history = []
        for row in rows:
            target = CANCELLED if row["status"] == CANCELLING else TIMED_OUT
            new = await conn.fetchrow(
                "UPDATE tasks SET status = $2::smallint, finished_at = now(), error = $3, version = version + 1 "
                f"WHERE id = $1 RETURNING {TASK_COLUMNS}",
                row["id"],
                target,
                "no worker reported within max_runtime plus grace",
            )
            assert new is not None
            history.append(history_for(new, row["status"], "abandoned"))
            changes.append(change_for(new, row["status"]))
        await insert_history(conn, history)
    return changes
