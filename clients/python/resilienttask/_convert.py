"""Between protobuf messages and the SDK's values: requests out, models in."""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import duration_pb2, json_format, struct_pb2, timestamp_pb2

from resilienttask.models import (
    Session,
    Snapshot,
    Task,
    TaskStats,
    TaskStatus,
    TaskUpdate,
    User,
    WatchEvent,
    Worker,
    WorkersUpdate,
)
from resilienttask.v1 import auth_pb2, scheduler_pb2, task_pb2

Seconds = timedelta | float | int

_STATUS_TO_PROTO: dict[TaskStatus, task_pb2.TaskStatus] = {
    TaskStatus.UNSPECIFIED: task_pb2.TASK_STATUS_UNSPECIFIED,
    TaskStatus.QUEUED: task_pb2.TASK_STATUS_QUEUED,
    TaskStatus.RUNNING: task_pb2.TASK_STATUS_RUNNING,
    TaskStatus.CANCELLING: task_pb2.TASK_STATUS_CANCELLING,
    TaskStatus.SUCCEEDED: task_pb2.TASK_STATUS_SUCCEEDED,
    TaskStatus.FAILED: task_pb2.TASK_STATUS_FAILED,
    TaskStatus.CANCELLED: task_pb2.TASK_STATUS_CANCELLED,
    TaskStatus.TIMED_OUT: task_pb2.TASK_STATUS_TIMED_OUT,
}
_STATUS_FROM_PROTO = {number: status for status, number in _STATUS_TO_PROTO.items()}


# -- requests ----------------------------------------------------------------------------------
def to_seconds(value: Seconds) -> float:
    """Seconds from a timedelta or a number; refuses negatives and NaN before they reach the wire."""
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if math.isnan(seconds) or math.isinf(seconds) or seconds < 0:
        raise ValueError(f"a duration must be a finite number of seconds >= 0, got {value!r}")
    return seconds


def to_duration(value: Seconds) -> duration_pb2.Duration:
    total_ns = round(to_seconds(value) * 1_000_000_000)
    return duration_pb2.Duration(seconds=total_ns // 1_000_000_000, nanos=total_ns % 1_000_000_000)


def status_number(status: TaskStatus | str | None) -> task_pb2.TaskStatus:
    if status is None:
        return task_pb2.TASK_STATUS_UNSPECIFIED
    try:
        return _STATUS_TO_PROTO[TaskStatus(status)]
    except ValueError as exc:
        names = ", ".join(s.value for s in TaskStatus if s is not TaskStatus.UNSPECIFIED)
        raise ValueError(f"unknown status {status!r}; one of: {names}") from exc


def submit_request(
    name: str,
    *,
    kind: str,
    payload: Mapping[str, Any] | None,
    workload: Seconds,
    max_runtime: Seconds | None,
    replicas: int,
    max_attempts: int | None,
    request_id: str | None,
) -> scheduler_pb2.SubmitTaskRequest:
    """The SubmitTask request; a request_id is generated here so retries of this call are idempotent."""
    request = scheduler_pb2.SubmitTaskRequest(
        name=name,
        kind=kind,
        workload=to_duration(workload),
        replicas=replicas,
        max_attempts=max_attempts or 0,
        request_id=request_id or str(uuid.uuid4()),
    )
    if max_runtime is not None:
        request.max_runtime.CopyFrom(to_duration(max_runtime))
    if payload:
        request.payload.update(dict(payload))
    return request


# -- replies -----------------------------------------------------------------------------------
def _time(message: timestamp_pb2.Timestamp, present: bool) -> datetime | None:
    if not present:
        return None
    return datetime.fromtimestamp(message.seconds + message.nanos / 1e9, tz=UTC)


def _timedelta(message: duration_pb2.Duration) -> timedelta:
    return timedelta(seconds=message.seconds, microseconds=message.nanos // 1000)


def task_from_proto(message: task_pb2.Task) -> Task:
    return Task(
        id=message.id,
        name=message.name,
        kind=message.kind,
        status=_STATUS_FROM_PROTO.get(message.status, TaskStatus.UNSPECIFIED),
        progress=message.progress,
        attempt=message.attempt,
        max_attempts=message.max_attempts,
        worker_id=message.worker_id,
        error=message.error,
        request_id=message.request_id,
        batch_id=message.batch_id,
        replica_index=message.replica_index,
        workload=_timedelta(message.workload),
        max_runtime=_timedelta(message.max_runtime),
        dead_lettered=message.dead_lettered,
        version=message.version,
        created_at=_time(message.created_at, message.HasField("created_at")),
        started_at=_time(message.started_at, message.HasField("started_at")),
        finished_at=_time(message.finished_at, message.HasField("finished_at")),
        payload=json_format.MessageToDict(message.payload) if message.HasField("payload") else {},
        result=_value(message.result) if message.HasField("result") else None,
        summary=message.summary,
    )


def _value(message: struct_pb2.Value) -> Any:
    return json_format.MessageToDict(message)


def stats_from_proto(message: task_pb2.TaskStats) -> TaskStats:
    return TaskStats(
        active=message.active,
        queued=message.queued,
        running=message.running,
        succeeded=message.succeeded,
        failed=message.failed,
        cancelled=message.cancelled,
        timed_out=message.timed_out,
    )


def worker_from_proto(message: task_pb2.Worker) -> Worker:
    return Worker(
        id=message.id,
        slots=message.slots,
        busy=message.busy,
        kinds=tuple(message.kinds),
        last_heartbeat=_time(message.last_heartbeat, message.HasField("last_heartbeat")),
        started_at=_time(message.started_at, message.HasField("started_at")),
    )


def session_from_proto(message: auth_pb2.SignupResponse | auth_pb2.LoginResponse) -> Session:
    user = User(
        id=message.user.id,
        email=message.user.email,
        created_at=_time(message.user.created_at, message.user.HasField("created_at")),
    )
    return Session(user=user, token=message.access_token, expires_at=_time(message.expires_at, True))


def _task_update(event: scheduler_pb2.TaskEvent, resume_token: str) -> TaskUpdate:
    return TaskUpdate(
        task=task_from_proto(event.task),
        stats=stats_from_proto(event.stats),
        deleted=event.deleted,
        resume_token=resume_token,
    )


def watch_events_from_proto(message: scheduler_pb2.WatchTasksResponse) -> list[WatchEvent]:
    """The SDK events of one stream message, oldest first: each of a batch, none for a heartbeat."""
    kind = message.WhichOneof("kind")
    token = message.resume_token
    if kind == "snapshot":
        snap = message.snapshot
        return [
            Snapshot(
                tasks=tuple(task_from_proto(t) for t in snap.tasks),
                stats=stats_from_proto(snap.stats),
                workers=tuple(worker_from_proto(w) for w in snap.workers),
                resume_token=token,
            )
        ]
    if kind == "event":
        return [_task_update(message.event, token)]
    if kind == "events":
        # Each event of a batch names its own position: resuming from it misses none of the rest.
        return [_task_update(event, event.resume_token) for event in message.events.events]
    if kind == "workers":
        return [WorkersUpdate(workers=tuple(worker_from_proto(w) for w in message.workers.workers), resume_token=token)]
    return []
