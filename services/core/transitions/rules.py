"""The allowed status changes, how each transition records its history row, and the event it announces.

Every status change of a task goes through this package. The database holds the same table
(rt_transition_allowed, migration 0004) and refuses any other change with RT002; it also bumps version
whenever the task as users see it changes, so no statement writes the bump by hand.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import asyncpg

from services.core.errors import FailedPrecondition
from services.core.events import TaskChange
from services.core.task_model import (
    CANCELLED,
    CANCELLING,
    FAILED,
    QUEUED,
    RUNNING,
    SCHEDULED,
    SUCCEEDED,
    TIMED_OUT,
    row_to_summary,
    status_name,
)

# RUNNING -> RUNNING is a reclaimed attempt (a new worker takes over from a dead one);
# RUNNING -> QUEUED is a failed attempt with attempts left; terminal -> QUEUED is RetryTask, terminal ->
# SCHEDULED a RetryTask with a delay; SCHEDULED -> QUEUED is a delayed task falling due (transitions.due), and
# SCHEDULED -> CANCELLED a cancel before then (the task never reaches a worker).
ALLOWED_TRANSITIONS: Mapping[int, frozenset[int]] = {
    QUEUED: frozenset({RUNNING, CANCELLED, FAILED}),
    RUNNING: frozenset({RUNNING, QUEUED, CANCELLING, SUCCEEDED, FAILED, CANCELLED, TIMED_OUT}),
    CANCELLING: frozenset({CANCELLED, SUCCEEDED, TIMED_OUT}),
    SUCCEEDED: frozenset(),
    FAILED: frozenset({QUEUED, SCHEDULED}),
    CANCELLED: frozenset({QUEUED, SCHEDULED}),
    TIMED_OUT: frozenset({QUEUED, SCHEDULED}),
    SCHEDULED: frozenset({QUEUED, CANCELLED}),
}

# Why a report or a held task is refused: the attempt was reclaimed and runs under a newer fence.
SUPERSEDED = "superseded"

# The sweeper publishes a fresh submission only if its gateway did not within this delay.
PUBLISH_GRACE_S = 5.0

# Notified (payload: the earliest run_at stored, epoch milliseconds) when SCHEDULED tasks are stored, so the due
# publishers sleeping until a later time wake at once (migration 0009, services.scheduler.due).
SCHEDULED_CHANNEL = "rt_scheduled"


class InvalidTransition(FailedPrecondition):
    """A change that the state machine does not allow from the task's current status."""

    def __init__(self, current: int, target: int, action: str = "") -> None:
        what = action or f"move to {status_name(target)}"
        super().__init__(f"cannot {what}: task is {status_name(current)}")
        self.current = current
        self.target = target


def check_transition(current: int, target: int, action: str = "") -> None:
    if target not in ALLOWED_TRANSITIONS.get(current, frozenset()):
        raise InvalidTransition(current, target, action)


@dataclass(frozen=True)
class RunningRef:
    """A task some worker runs, for pushing a stop command to that worker."""

    worker_id: str
    task_id: str
    fence: int


# -- history: one row per transition, written in the transition's own statement or transaction ----------
# Read through the task_history view, which derives each task's first row (its submission) from the task
# row (migration 0006); every later transition stores its row here.
HISTORY_TABLE = "task_history_stored"
HISTORY_COLUMNS = "task_id, version, from_status, to_status, attempt, worker_id, fence, detail"


def history_of(relation: str, from_status: str, detail: str) -> str:
    """SQL recording one history row per row of `relation` (a CTE returning task columns) in the same statement."""
    return (
        f"INSERT INTO {HISTORY_TABLE} ({HISTORY_COLUMNS}) "
        f"SELECT id, version, {from_status}, status, attempt, worker_id, fence, {detail} FROM {relation}"
    )


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


async def insert_history(conn: asyncpg.Connection, entries: Sequence[HistoryEntry]) -> None:
    """The history rows of a checked (multi-statement) transition, in one statement."""
    if not entries:
        return
    await conn.execute(
        f"INSERT INTO {HISTORY_TABLE} ({HISTORY_COLUMNS}) "
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


# -- the event each transition announces, once committed ------------------------------------------------
def change_for(row: asyncpg.Record, previous_status: int, deleted: bool = False) -> TaskChange:
    return TaskChange(str(row["owner_id"]), row_to_summary(row), previous_status, deleted)


# -- ids from workers are not trusted to be UUIDs ----------------------------------------------------------
def is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def valid_uuids(ids: Sequence[str]) -> list[str]:
    return [str(uuid.UUID(value)) for value in ids if is_uuid(value)]
