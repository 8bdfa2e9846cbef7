"""A task's story for GetTaskHistory: its transitions (the task_history view, migration 0006) and the attempts
they describe.

An attempt starts with a transition into RUNNING (a start, or a reclaim by another worker) and ends with the
next transition out of RUNNING or CANCELLING other than the cancel request: back to QUEUED (it failed and is
retried), into a final status, or RUNNING again (reclaimed: its worker went silent). The attempt number is the
one the start recorded; a task retried by its user counts its attempts from 1 again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from google.protobuf import timestamp_pb2

from resilienttask.v1 import scheduler_pb2, task_pb2
from services.core.task_model import CANCELLING, FAILED, QUEUED, RUNNING, SUCCEEDED, TASK_COLUMNS, row_to_task

UNSPECIFIED = task_pb2.TASK_STATUS_UNSPECIFIED
# Transitions returned: the latest ones, oldest first (GetTaskHistoryResponse.transitions).
MAX_TRANSITIONS = 1000
# Attempts returned: the latest ones (a task retried again and again by its user has no end of them).
MAX_ATTEMPTS = 1000
# How the finish transitions record an outcome without an error (transitions.finish).
_NO_ERROR = "finished"

_LATEST_TRANSITIONS = """
SELECT * FROM (
    SELECT from_status, to_status, at, attempt, worker_id, detail, version FROM task_history
    WHERE task_id = $1 ORDER BY version DESC, at DESC LIMIT $2
) AS latest ORDER BY version, at
"""

# Only the transitions that start or end an attempt, the latest first (about two per attempt).
_ATTEMPT_BOUNDS = f"""
SELECT * FROM (
    SELECT from_status, to_status, at, attempt, worker_id, detail, version FROM task_history
    WHERE task_id = $1
        AND (to_status = {RUNNING} OR (from_status IN ({RUNNING}, {CANCELLING}) AND to_status <> {CANCELLING}))
    ORDER BY version DESC, at DESC LIMIT $2
) AS latest ORDER BY version, at
"""


@dataclass(frozen=True)
class TaskHistory:
    task: asyncpg.Record
    transitions: list[asyncpg.Record]
    truncated: bool
    bounds: list[asyncpg.Record]


async def read(pool: asyncpg.Pool, owner_id: str, task_id: str) -> TaskHistory | None:
    """The owner's task with its history, read in one snapshot; None when the owner has no such task."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        task = await conn.fetchrow(
            f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1 AND owner_id = $2", task_id, owner_id
        )
        if task is None:
            return None
        transitions = await conn.fetch(_LATEST_TRANSITIONS, task_id, MAX_TRANSITIONS + 1)
        # Two bounds per attempt, and one more so that the oldest attempt kept has its start.
        bounds = await conn.fetch(_ATTEMPT_BOUNDS, task_id, 2 * MAX_ATTEMPTS + 1)
    truncated = len(transitions) > MAX_TRANSITIONS
    return TaskHistory(task, list(transitions[1:] if truncated else transitions), truncated, list(bounds))


def _set_time(field: timestamp_pb2.Timestamp, value: datetime | None) -> None:
    if value is not None:
        field.FromDatetime(value)


def attempts(bounds: Sequence[asyncpg.Record]) -> list[scheduler_pb2.TaskAttempt]:
    """The attempts the start and end transitions describe, oldest first (the latest MAX_ATTEMPTS)."""
    found: list[scheduler_pb2.TaskAttempt] = []
    current: scheduler_pb2.TaskAttempt | None = None
    for row in bounds:
        if current is not None and row["from_status"] in (RUNNING, CANCELLING) and row["to_status"] != CANCELLING:
            _end(current, row)
            current = None
        if row["to_status"] == RUNNING:
            current = scheduler_pb2.TaskAttempt(attempt=row["attempt"], worker_id=row["worker_id"], outcome=RUNNING)
            _set_time(current.started_at, row["at"])
            found.append(current)
    return found[-MAX_ATTEMPTS:]


def _end(attempt: scheduler_pb2.TaskAttempt, row: asyncpg.Record) -> None:
    status, detail = row["to_status"], row["detail"]
    _set_time(attempt.finished_at, row["at"])
    if status == QUEUED:  # failed, with attempts left: retried
        attempt.outcome, attempt.error = FAILED, detail
    elif status == RUNNING:  # taken over by another worker: this one went silent
        attempt.outcome, attempt.error = FAILED, f"its worker stopped responding ({detail})"
    else:
        attempt.outcome = status
        attempt.error = "" if status == SUCCEEDED or detail == _NO_ERROR else detail


def transition(row: asyncpg.Record) -> scheduler_pb2.TaskTransition:
    message = scheduler_pb2.TaskTransition(
        from_status=row["from_status"] or UNSPECIFIED,
        to_status=row["to_status"],
        attempt=row["attempt"],
        worker_id=row["worker_id"],
        detail=row["detail"],
        version=row["version"],
    )
    _set_time(message.at, row["at"])
    return message


def to_response(history: TaskHistory) -> scheduler_pb2.GetTaskHistoryResponse:
    return scheduler_pb2.GetTaskHistoryResponse(
        task=row_to_task(history.task),
        attempts=attempts(history.bounds),
        transitions=[transition(r) for r in history.transitions],
        truncated=history.truncated,
    )
