"""Searching tasks, reading a task's history, acting on many tasks: the values the SDK returns for these, and the
requests it sends (shared by the blocking and the asyncio client).

    client.list(name_contains="nightly", statuses=["failed"], created_after=yesterday)
    client.count(kind="fail", dead_lettered=True)
    client.history(task_id).attempts
    client.retry_many(statuses=["failed"], name_contains="nightly")   # every page, until done
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypedDict

from resilienttask._convert import status_from_number, status_number, task_from_proto, time_from_proto, to_timestamp
from resilienttask.limits import field_limits
from resilienttask.models import Task, TaskStatus
from resilienttask.v1 import scheduler_pb2

__all__ = ["BulkResult", "TaskAttempt", "TaskFilter", "TaskHistory", "TaskTransition"]

# Ids per bulk call (the service's bound): a longer list is sent in several calls.
MAX_IDS_PER_CALL = field_limits(scheduler_pb2.TaskIds, "task_ids").max_items or 1
# The most tasks a page holds: ListTasks and the bulk calls declare the same bound.
MAX_PAGE_SIZE = field_limits(scheduler_pb2.CancelTasksRequest, "page_size").max_value or 1


class TaskFilter(TypedDict, total=False):
    """Conditions on tasks, as keyword arguments of list(), count() and the *_many() actions; all must hold.

    name_contains: text in the name, ignoring case (% and _ are plain characters); id_prefix: the start of the
    id; kind: the handler kind; statuses: any of these (TaskStatus or names); created_after (at or after) and
    created_before: aware datetimes; schedule_id: submitted by this schedule; dead_lettered: True for tasks that
    failed their last attempt; concurrency_key: tasks with this key.
    """

    name_contains: str
    id_prefix: str
    kind: str
    statuses: Iterable[TaskStatus | str]
    created_after: datetime
    created_before: datetime
    schedule_id: str
    dead_lettered: bool
    concurrency_key: str


def filter_message(batch_id: str, conditions: TaskFilter) -> scheduler_pb2.TaskFilter:
    """The TaskFilter message; refuses unknown conditions (a typo must not widen a bulk action)."""
    unknown = sorted(set(conditions) - set(TaskFilter.__annotations__))
    if unknown:
        raise TypeError(f"unknown filter condition(s): {', '.join(unknown)}")
    message = scheduler_pb2.TaskFilter(
        statuses=[status_number(s) for s in conditions.get("statuses", ())],
        name_contains=conditions.get("name_contains", ""),
        id_prefix=conditions.get("id_prefix", ""),
        batch_id=batch_id,
        kind=conditions.get("kind", ""),
        schedule_id=conditions.get("schedule_id", ""),
        dead_lettered=conditions.get("dead_lettered", False),
        concurrency_key=conditions.get("concurrency_key", ""),
    )
    created_after, created_before = conditions.get("created_after"), conditions.get("created_before")
    if created_after is not None:
        message.created_after.CopyFrom(to_timestamp(created_after))
    if created_before is not None:
        message.created_before.CopyFrom(to_timestamp(created_before))
    return message


def list_request(
    status: TaskStatus | str | None, batch_id: str, page_size: int, conditions: TaskFilter
) -> scheduler_pb2.ListTasksRequest:
    return scheduler_pb2.ListTasksRequest(
        status=status_number(status), page_size=page_size, batch_id=batch_id, filter=filter_message("", conditions)
    )


def bulk_selections(
    ids: Iterable[str] | None, batch_id: str, conditions: TaskFilter
) -> Iterator[scheduler_pb2.TaskSelection]:
    """The selections a bulk action sends: the ids by 500, or one filter (paged by the service's tokens).

    Refuses an empty selection: acting on every task needs a condition that says so (e.g. statuses=[...]).
    """
    if ids is not None:
        if batch_id or conditions:
            raise ValueError("give task ids or filter conditions, not both")
        listed = list(dict.fromkeys(ids))
        for start in range(0, len(listed), MAX_IDS_PER_CALL):
            chunk = listed[start : start + MAX_IDS_PER_CALL]
            yield scheduler_pb2.TaskSelection(ids=scheduler_pb2.TaskIds(task_ids=chunk))
        return
    message = filter_message(batch_id, conditions)
    if message == scheduler_pb2.TaskFilter():
        raise ValueError("give task ids or at least one filter condition")
    yield scheduler_pb2.TaskSelection(filter=message)


# A page refused by a per-user limit wrote nothing, so the same page is asked again after these pauses (about a
# minute in all): a retry of many pages spends the submission rate's burst on its first page, and the next pages
# wait for it to refill (50 tasks per second by default). Then the refusal is raised.
LIMIT_PAUSES_S = (1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0, 10.0)


@dataclass(frozen=True)
class BulkResult:
    """What a bulk action did over every page: tasks affected, and tasks taken but left as they were (not in a
    state the action applies to, unknown, or another user's)."""

    affected: int = 0
    skipped: int = 0

    def __add__(self, other: BulkResult) -> BulkResult:
        return BulkResult(self.affected + other.affected, self.skipped + other.skipped)

    def to_dict(self) -> dict[str, Any]:
        return {"affected": self.affected, "skipped": self.skipped}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@dataclass(frozen=True)
class TaskAttempt:
    """One run of a task's handler: outcome FAILED also for an attempt that failed and was retried, RUNNING
    while it runs."""

    attempt: int
    worker_id: str
    started_at: datetime | None
    finished_at: datetime | None
    outcome: TaskStatus
    error: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "worker_id": self.worker_id,
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "outcome": self.outcome.value,
            "error": self.error,
        }


@dataclass(frozen=True)
class TaskTransition:
    """One recorded status change; from_status is None for the submission."""

    from_status: TaskStatus | None
    to_status: TaskStatus
    at: datetime | None
    attempt: int
    worker_id: str
    detail: str
    version: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "from_status": self.from_status.value if self.from_status is not None else None,
            "to_status": self.to_status.value,
            "at": _iso(self.at),
            "attempt": self.attempt,
            "worker_id": self.worker_id,
            "detail": self.detail,
            "version": self.version,
        }


@dataclass(frozen=True)
class TaskHistory:
    """A task (whole: payload and result), its attempts and its transitions, oldest first; truncated when only
    the latest 1,000 transitions are there."""

    task: Task
    attempts: tuple[TaskAttempt, ...]
    transitions: tuple[TaskTransition, ...]
    truncated: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task.to_dict(),
            "attempts": [a.to_dict() for a in self.attempts],
            "transitions": [t.to_dict() for t in self.transitions],
            "truncated": self.truncated,
        }


def history_from_proto(message: scheduler_pb2.GetTaskHistoryResponse) -> TaskHistory:
    return TaskHistory(
        task=task_from_proto(message.task),
        attempts=tuple(
            TaskAttempt(
                attempt=a.attempt,
                worker_id=a.worker_id,
                started_at=time_from_proto(a.started_at, a.HasField("started_at")),
                finished_at=time_from_proto(a.finished_at, a.HasField("finished_at")),
                outcome=status_from_number(a.outcome),
                error=a.error,
            )
            for a in message.attempts
        ),
        transitions=tuple(
            TaskTransition(
                from_status=status_from_number(t.from_status) if t.from_status else None,
                to_status=status_from_number(t.to_status),
                at=time_from_proto(t.at, t.HasField("at")),
                attempt=t.attempt,
                worker_id=t.worker_id,
                detail=t.detail,
                version=t.version,
            )
            for t in message.transitions
        ),
        truncated=message.truncated,
    )
