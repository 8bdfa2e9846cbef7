"""The finish transition: a worker reports the outcome of an attempt.

A report is recorded only from the task's current holder (the worker id recorded at its start, which is
the reporting worker's token subject) with the task's current fence; a stale one (the attempt was
reclaimed), or one from any other worker, is refused as superseded. A failed attempt with attempts left
goes back to QUEUED with backoff. An attempt handed back by a draining worker goes back to QUEUED at once and
is not counted: the task lost nothing but its place on that worker.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from resilienttask.json_values import value_to_python
from resilienttask.worker.v1 import worker_pb2
from services.core import task_metrics
from services.core.events import TaskChange
from services.core.settings import setting
from services.core.task_model import (
    CANCELLED,
    CANCELLING,
    FAILED,
    QUALIFIED_SUMMARY_COLUMNS,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    SUMMARY_COLUMNS,
    TIMED_OUT,
    row_to_summary,
)
from services.core.transitions.rules import (
    SUPERSEDED,
    change_for,
    check_transition,
    history_for,
    history_of,
    insert_history,
    is_uuid,
    valid_uuids,
)

# The longest error text an outcome may store.
MAX_ERROR_CHARS = 4000
ALREADY_FINISHED = "already finished"


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter between attempts."""

    base_ms: int = setting(
        "RTASK_RETRY_BASE_MS", 1000, "a failed attempt's retry waits this long (doubling each attempt, with jitter)"
    )
    max_ms: int = setting("RTASK_RETRY_MAX_MS", 60_000, "the longest wait before a retry")

    def delay_s(self, attempt: int) -> float:
        ceiling = min(self.max_ms, self.base_ms * 2 ** max(0, attempt - 1))
        return ceiling * random.uniform(0.5, 1.0) / 1000


@dataclass
class FinishOutcome:
    results: list[worker_pb2.FinishResult]
    changes: list[TaskChange]
    requeued: list[str]


def _target(row: asyncpg.Record, outcome: int) -> tuple[int, bool]:
    """(new status, dead_lettered) for an attempt's outcome, given the task's status."""
    if outcome == worker_pb2.OUTCOME_HANDED_BACK and row["status"] != CANCELLING:
        return QUEUED, False
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
    # Handed back by a draining worker: queued at once, the attempt not counted, no error recorded.
    handed_back: bool = False


# The common finish in one autocommit statement: a success reported with the task's current fence.
_FAST_SUCCESS = f"""
WITH t AS (SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[]) AS u(id, fence, result)),
locked AS (
    SELECT tasks.id FROM tasks JOIN t ON tasks.id = t.id
    WHERE tasks.status = {RUNNING} AND tasks.fence = t.fence AND tasks.worker_id = $4
    ORDER BY tasks.id FOR UPDATE OF tasks
),
finished AS (
    UPDATE tasks SET status = {SUCCEEDED}, result = t.result::jsonb, progress = 1, error = '',
        finished_at = now()
    FROM t, locked WHERE tasks.id = t.id AND tasks.id = locked.id
    RETURNING {QUALIFIED_SUMMARY_COLUMNS}
),
recorded AS ({history_of("finished", str(RUNNING), "'finished'")})
SELECT * FROM finished
"""


# A cancelled attempt of a running or cancelling task, reported with its current fence, in one statement.
_FAST_CANCELLED = f"""
WITH t AS (SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::text[]) AS u(id, fence, result, error)),
locked AS (
    SELECT tasks.id, tasks.status AS before FROM tasks JOIN t ON tasks.id = t.id
    WHERE tasks.status IN ({RUNNING}, {CANCELLING}) AND tasks.fence = t.fence AND tasks.worker_id = $5
    ORDER BY tasks.id FOR UPDATE OF tasks
),
finished AS (
    UPDATE tasks SET status = {CANCELLED}, dead_lettered = false, result = t.result::jsonb, error = t.error,
        finished_at = now()
    FROM t, locked WHERE tasks.id = t.id AND tasks.id = locked.id
    RETURNING {QUALIFIED_SUMMARY_COLUMNS}, locked.before
),
recorded AS ({history_of("finished", "before", "CASE WHEN error = '' THEN 'finished' ELSE error END")})
SELECT * FROM finished
"""
# Outcomes recorded in one statement each when the report carries the task's current fence. Every statement
# here returns the summary columns only: the rows make change events, which carry neither payload nor result.
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
        if item.outcome in _FAST_OUTCOMES and is_uuid(item.task.task_id):
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
            worker_id,
        )
        done.update({str(r["id"]): (r, RUNNING) for r in rows})
        task_metrics.ended(rows)
    if cancelled:
        rows = await pool.fetch(
            _FAST_CANCELLED,
            [i.task.task_id for i in cancelled],
            [i.task.fence for i in cancelled],
            [_result_json(i) for i in cancelled],
            [i.error[:MAX_ERROR_CHARS] for i in cancelled],
            worker_id,
        )
        done.update({str(r["id"]): (r, r["before"]) for r in rows})
        task_metrics.ended(rows)
    rest = [item for item in items if first.get(item.task.task_id) is not item or item.task.task_id not in done]
    checked = await _finish_checked(pool, worker_id, rest, retry) if rest else FinishOutcome([], [], [])
    later = iter(checked.results)
    results = [
        worker_pb2.FinishResult(task_id=item.task.task_id, accepted=True)
        if first.get(item.task.task_id) is item and item.task.task_id in done
        else next(later)
        for item in items
    ]
    # Summaries straight from the rows: the result just recorded is not parsed back for the event.
    changes = [TaskChange(str(row["owner_id"]), row_to_summary(row), before) for row, before in done.values()]
    changes += checked.changes
    return FinishOutcome(results, changes, checked.requeued)


def _result_json(item: worker_pb2.FinishItem) -> str | None:
    return json.dumps(value_to_python(item.result)) if item.HasField("result") else None


async def _finish_checked(
    pool: asyncpg.Pool, worker_id: str, items: Sequence[worker_pb2.FinishItem], retry: RetryPolicy
) -> FinishOutcome:
    """Record outcomes; a report whose fence is not the task's current one is refused as superseded."""
    ids = valid_uuids([item.task.task_id for item in items])
    results: list[worker_pb2.FinishResult] = []
    accepted: dict[str, _Accepted] = {}
    async with pool.acquire() as conn, conn.transaction():
        rows = {
            str(r["id"]): r
            for r in await conn.fetch(
                f"SELECT {SUMMARY_COLUMNS} FROM tasks WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE", ids
            )
        }
        repeated: list[asyncpg.Record] = []
        fenced: list[str] = []
        for item in items:
            task_id = item.task.task_id
            row = rows.get(task_id)
            reason = _refusal(row, item, worker_id)
            if reason or task_id in accepted:
                results.append(
                    worker_pb2.FinishResult(task_id=task_id, accepted=False, reason=reason or "duplicate report")
                )
                if reason == ALREADY_FINISHED and row is not None:
                    repeated.append(row)
                elif reason == SUPERSEDED and row is not None:
                    fenced.append(row["kind"])
                continue
            assert row is not None
            target, dead = _target(row, item.outcome)
            check_transition(row["status"], target)
            handed_back = item.outcome == worker_pb2.OUTCOME_HANDED_BACK and target == QUEUED
            accepted[task_id] = _Accepted(
                task_id=task_id,
                target=target,
                dead=dead,
                error=item.error[:MAX_ERROR_CHARS],
                result_json=_result_json(item),
                delay_s=0.0 if handed_back else retry.delay_s(row["attempt"]),
                handed_back=handed_back,
            )
            results.append(worker_pb2.FinishResult(task_id=task_id, accepted=True))
        updated = await _record_outcomes(conn, list(accepted.values()))
        changes = [change_for(updated[i], rows[i]["status"]) for i in accepted]
        # A report repeated for an outcome already recorded: its first reply (and perhaps its event) was lost
        # with a scheduler that died after the commit, so the state is announced again.
        changes += [change_for(row, row["status"]) for row in repeated]
        history = [history_for(updated[i], rows[i]["status"], a.error or "finished") for i, a in accepted.items()]
        await insert_history(conn, history)
    # Committed: counted now. A handback is no end of an attempt, neither a run nor a retry.
    task_metrics.ended(updated[i] for i, a in accepted.items() if not a.handed_back)
    task_metrics.fenced(fenced)
    requeued = [i for i, a in accepted.items() if a.target == QUEUED]
    return FinishOutcome(results, changes, requeued)


def _refusal(row: asyncpg.Record | None, item: worker_pb2.FinishItem, worker_id: str) -> str:
    """Why an outcome cannot be recorded ("" when it can).

    A worker that does not hold the task hears "superseded", as for a stale fence: never whether it guessed
    the current fence, and it leaves the entry alone (it belongs to the holder).
    """
    if row is None:
        return "task not found"
    if row["fence"] != item.task.fence or row["worker_id"] != worker_id:
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
        # A handed-back attempt gives its count back and leaves the error as it was; a failed one records both.
        rows = await conn.fetch(
            f"UPDATE tasks SET status = {QUEUED}, error = CASE WHEN t.handed_back THEN tasks.error ELSE t.error END, "
            "attempt = tasks.attempt - CASE WHEN t.handed_back THEN 1 ELSE 0 END, "
            "dispatch_id = t.dispatch_id, published = false, "
            "published_at = NULL, publish_after = now() + make_interval(secs => t.delay_s) "
            "FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::float8[], $5::bool[]) "
            "AS t(id, error, dispatch_id, delay_s, handed_back) "
            f"WHERE tasks.id = t.id RETURNING {QUALIFIED_SUMMARY_COLUMNS}",
            [o.task_id for o in requeue],
            [o.error for o in requeue],
            [str(uuid.uuid4()) for _ in requeue],
            [o.delay_s for o in requeue],
            [o.handed_back for o in requeue],
        )
        updated.update({str(r["id"]): r for r in rows})
    if finish:
        rows = await conn.fetch(
            "UPDATE tasks SET status = t.status, dead_lettered = t.dead, error = t.error, result = t.result::jsonb, "
            f"progress = CASE WHEN t.status = {SUCCEEDED} THEN 1 ELSE progress END, finished_at = now() "
            "FROM unnest($1::uuid[], $2::smallint[], $3::bool[], $4::text[], $5::text[]) "
            "AS t(id, status, dead, error, result) "
            f"WHERE tasks.id = t.id RETURNING {QUALIFIED_SUMMARY_COLUMNS}",
            [o.task_id for o in finish],
            [o.target for o in finish],
            [o.dead for o in finish],
            [o.error for o in finish],
            [o.result_json for o in finish],
        )
        updated.update({str(r["id"]): r for r in rows})
    return updated
