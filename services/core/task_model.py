"""Task statuses and the row → message conversion (the allowed transitions: services.core.transitions)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import json_format, struct_pb2

from resilienttask.v1 import task_pb2
from services.core.task_summary import as_summary

QUEUED = task_pb2.TASK_STATUS_QUEUED
RUNNING = task_pb2.TASK_STATUS_RUNNING
CANCELLING = task_pb2.TASK_STATUS_CANCELLING
SUCCEEDED = task_pb2.TASK_STATUS_SUCCEEDED
FAILED = task_pb2.TASK_STATUS_FAILED
CANCELLED = task_pb2.TASK_STATUS_CANCELLED
TIMED_OUT = task_pb2.TASK_STATUS_TIMED_OUT
# Waiting for its run_at: stored, not active, never in a dispatch stream until due (services.scheduler.due).
SCHEDULED = task_pb2.TASK_STATUS_SCHEDULED

TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED, TIMED_OUT})
ACTIVE = frozenset({QUEUED, RUNNING, CANCELLING})
RETRYABLE = frozenset({FAILED, CANCELLED, TIMED_OUT})
# Not finished: what DeleteTask refuses (cancel it first) and ClearHistory leaves alone.
UNFINISHED = ACTIVE | {SCHEDULED}


def status_name(status: int) -> str:
    return task_pb2.TaskStatus.Name(status).removeprefix("TASK_STATUS_")  # type: ignore[arg-type]


# Columns every task query returns, so row_to_task can build the full message.
TASK_COLUMNS = (
    "id, owner_id, name, kind, payload, status, progress, attempt, max_attempts, worker_id, error, "
    "request_id, batch_id, replica_index, workload_ms, max_runtime_ms, dead_lettered, result, version, "
    "created_at, started_at, finished_at, dispatch_id, entry_id, fence, run_at, schedule_id, priority, "
    "concurrency_key, concurrency_limit, wait_reason, surplus"
)

# The columns of a summary (row_to_summary): the watch snapshot reads neither payload nor result.
SUMMARY_COLUMNS = ", ".join(c for c in (c.strip() for c in TASK_COLUMNS.split(",")) if c not in ("payload", "result"))

# The same columns, qualified, for UPDATE ... FROM statements that join other relations.
QUALIFIED_TASK_COLUMNS = ", ".join(f"tasks.{column.strip()}" for column in TASK_COLUMNS.split(","))
QUALIFIED_SUMMARY_COLUMNS = ", ".join(f"tasks.{column.strip()}" for column in SUMMARY_COLUMNS.split(","))


def in_batch(owner: str, batch: str) -> str:
    """SQL condition: the task is a replica of the owner's batch (owner and batch are SQL parameters).

    A batch's id is the id of its first replica (since migration 0005), found by primary key, or for an
    older batch through a small legacy index; its replicas share that replica's request_id, so the unique
    key (owner_id, request_id, replica_index) finds them all, and tasks needs no index on batch_id.
    """
    first = (
        f"SELECT request_id FROM tasks WHERE id = {batch} AND owner_id = {owner} AND batch_id = {batch} "
        f"UNION ALL SELECT request_id FROM tasks WHERE owner_id = {owner} AND batch_id = {batch} "
        "AND replica_index = 0 AND batch_id <> id"
    )
    return f"(batch_id = {batch} AND request_id = (SELECT request_id FROM ({first}) AS first LIMIT 1))"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _set_time(field: Any, value: datetime | None) -> None:
    """What Timestamp.FromDatetime sets (a naive time read as UTC), in integer arithmetic: several times faster,
    and every change event converts a few times per task."""
    if value is not None:
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        seconds, micros = divmod((aware - _EPOCH) // _MICROSECOND, 1_000_000)
        field.seconds = seconds
        field.nanos = micros * 1000


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def row_to_task(row: Mapping[str, Any]) -> task_pb2.Task:
    return _to_task(row, {})


def rows_to_tasks(rows: Iterable[Mapping[str, Any]]) -> list[task_pb2.Task]:
    """row_to_task for many rows; a payload shared by several rows (replicas, a batch) is parsed once."""
    payloads: dict[str, struct_pb2.Struct] = {}
    return [_to_task(row, payloads) for row in rows]


def row_to_summary(row: Mapping[str, Any]) -> task_pb2.Task:
    """The task's summary (services.core.task_summary); payload and result, if the row has them, are not read."""
    return as_summary(_without_bulk(row))


def _without_bulk(row: Mapping[str, Any]) -> task_pb2.Task:
    """Every field but payload and result."""
    task = task_pb2.Task(
        id=str(row["id"]),
        name=row["name"],
        kind=row["kind"],
        status=row["status"],
        progress=row["progress"],
        attempt=row["attempt"],
        max_attempts=row["max_attempts"],
        worker_id=row["worker_id"],
        error=row["error"],
        request_id=row["request_id"],
        batch_id=str(row["batch_id"]),
        replica_index=row["replica_index"],
        dead_lettered=row["dead_lettered"],
        version=row["version"],
    )
    schedule_id = row.get("schedule_id")
    if schedule_id is not None:
        task.schedule_id = str(schedule_id)
    task.priority = row.get("priority") or 0
    concurrency_key = row.get("concurrency_key")
    if concurrency_key is not None:
        task.concurrency_key = concurrency_key
        task.concurrency_limit = row["concurrency_limit"]
    if row["status"] == QUEUED:  # a reason left on a task that is no longer queued is not told
        task.wait_reason = row.get("wait_reason") or 0  # type: ignore[assignment]
    task.workload.FromMilliseconds(row["workload_ms"])
    task.max_runtime.FromMilliseconds(row["max_runtime_ms"])
    _set_time(task.created_at, row["created_at"])
    _set_time(task.started_at, row["started_at"])
    _set_time(task.finished_at, row["finished_at"])
    _set_time(task.run_at, row.get("run_at"))
    return task


def _to_task(row: Mapping[str, Any], payloads: dict[str, struct_pb2.Struct]) -> task_pb2.Task:
    task = _without_bulk(row)
    raw = row["payload"]
    if isinstance(raw, str) and raw in payloads:
        task.payload.CopyFrom(payloads[raw])
    else:
        payload = _json(raw)
        if payload:
            json_format.ParseDict(payload, task.payload)
        if isinstance(raw, str):
            payloads[raw] = task.payload
    result = _json(row["result"])
    if result is not None:
        task.result.CopyFrom(json_format.ParseDict(result, struct_pb2.Value()))
    return task
