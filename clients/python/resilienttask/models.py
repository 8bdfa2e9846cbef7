"""Plain, frozen values the SDK returns instead of protobuf messages, so callers never touch generated code.

Every value has `to_dict()` giving JSON-ready data (statuses as lower-case names, durations in
seconds, times as ISO 8601 strings): the CLI's `--json` output is exactly that.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

__all__ = [
    "Session",
    "Snapshot",
    "Task",
    "TaskStats",
    "TaskStatus",
    "TaskUpdate",
    "User",
    "WatchEvent",
    "Worker",
    "WorkersUpdate",
]


class TaskStatus(enum.StrEnum):
    """Where a task is in its life; the value is the name the CLI and JSON output use."""

    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    UNSPECIFIED = "unspecified"

    @property
    def terminal(self) -> bool:
        """True for the four end states: the task will not change again unless retried."""
        return self in _TERMINAL


_TERMINAL = frozenset({TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.TIMED_OUT})


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@dataclass(frozen=True)
class User:
    """A person who owns tasks."""

    id: str
    email: str
    created_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "email": self.email, "created_at": _iso(self.created_at)}


@dataclass(frozen=True)
class Session:
    """What signup and login return: the user and its bearer token."""

    user: User
    token: str = field(repr=False)
    expires_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"user": self.user.to_dict(), "expires_at": _iso(self.expires_at)}


@dataclass(frozen=True)
class Task:
    """One unit of work as the service last reported it; `version` grows with every change.

    Tasks from watch() are summaries (`summary` True): their payload and result are left out (empty dict,
    None) and their error is cut to its first KiB; get() returns the whole task. wait() returns whole tasks.
    """

    id: str
    name: str
    kind: str
    status: TaskStatus
    progress: float
    attempt: int
    max_attempts: int
    worker_id: str
    error: str
    request_id: str
    batch_id: str
    replica_index: int
    workload: timedelta
    max_runtime: timedelta
    dead_lettered: bool
    version: int
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    payload: dict[str, Any] = field(default_factory=dict)
    result: Any = None
    summary: bool = False

    @property
    def done(self) -> bool:
        """True once the task reached an end state."""
        return self.status.terminal

    @property
    def succeeded(self) -> bool:
        return self.status is TaskStatus.SUCCEEDED

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "status": self.status.value,
            "progress": self.progress,
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
            "worker_id": self.worker_id,
            "error": self.error,
            "request_id": self.request_id,
            "batch_id": self.batch_id,
            "replica_index": self.replica_index,
            "workload_s": self.workload.total_seconds(),
            "max_runtime_s": self.max_runtime.total_seconds(),
            "dead_lettered": self.dead_lettered,
            "version": self.version,
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "payload": self.payload,
            "result": self.result,
            "summary": self.summary,
        }


@dataclass(frozen=True)
class TaskStats:
    """The caller's tasks counted per status; `active` = queued + running."""

    active: int = 0
    queued: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    timed_out: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "active": self.active,
            "queued": self.queued,
            "running": self.running,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "timed_out": self.timed_out,
        }


@dataclass(frozen=True)
class Worker:
    """One member of the worker pool."""

    id: str
    slots: int
    busy: int
    kinds: tuple[str, ...]
    last_heartbeat: datetime | None
    started_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "slots": self.slots,
            "busy": self.busy,
            "kinds": list(self.kinds),
            "last_heartbeat": _iso(self.last_heartbeat),
            "started_at": _iso(self.started_at),
        }


@dataclass(frozen=True)
class Snapshot:
    """Full state: the first thing a watch yields, and again when the service could not replay missed events.

    Its tasks are summaries (Task.summary): no payload or result; Client.get() has them.
    """

    tasks: tuple[Task, ...]
    stats: TaskStats
    workers: tuple[Worker, ...]
    resume_token: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "snapshot",
            "tasks": [t.to_dict() for t in self.tasks],
            "stats": self.stats.to_dict(),
            "workers": [w.to_dict() for w in self.workers],
            "resume_token": self.resume_token,
        }


@dataclass(frozen=True)
class TaskUpdate:
    """One task changed (or was deleted); stats are the counts after the change. `task` is a summary
    (Task.summary): no payload or result; Client.get() has them."""

    task: Task
    stats: TaskStats
    deleted: bool
    resume_token: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "task",
            "task": self.task.to_dict(),
            "stats": self.stats.to_dict(),
            "deleted": self.deleted,
            "resume_token": self.resume_token,
        }


@dataclass(frozen=True)
class WorkersUpdate:
    """The worker pool changed."""

    workers: tuple[Worker, ...]
    resume_token: str

    def to_dict(self) -> dict[str, Any]:
        return {"type": "workers", "workers": [w.to_dict() for w in self.workers], "resume_token": self.resume_token}


WatchEvent = Snapshot | TaskUpdate | WorkersUpdate
