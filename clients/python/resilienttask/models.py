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
    "CatchupPolicy",
    "KindControl",
    "LogLine",
    "OverlapPolicy",
    "RateLimit",
    "Schedule",
    "Session",
    "Snapshot",
    "Task",
    "TaskStats",
    "TaskStatus",
    "TaskTemplate",
    "TaskUpdate",
    "User",
    "WaitReason",
    "WatchEvent",
    "Worker",
    "WorkersUpdate",
]


class TaskStatus(enum.StrEnum):
    """Where a task is in its life; the value is the name the CLI and JSON output use."""

    SCHEDULED = "scheduled"
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


class WaitReason(enum.StrEnum):
    """What a queued task waits for beyond a free worker (NONE: nothing else, or it is not queued)."""

    NONE = "none"
    SLOT_SHARE = "slot_share"
    CONCURRENCY_KEY = "concurrency_key"
    RATE_LIMIT = "rate_limit"
    KIND_PAUSED = "kind_paused"


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

    `run_at` is when a delayed task becomes (or became) due, None for one due at submission; `schedule_id`
    names the schedule that submitted it ("" for a task submitted directly). `priority` runs from 1 (lowest)
    to 5 (most urgent); at most `concurrency_limit` of the owner's tasks with the same `concurrency_key` run
    at once ("" and 0: no key). `wait_reason` says what a queued task waits for besides a free worker.

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
    run_at: datetime | None = None
    schedule_id: str = ""
    priority: int = 0
    concurrency_key: str = ""
    concurrency_limit: int = 0
    wait_reason: WaitReason = WaitReason.NONE

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
            "run_at": _iso(self.run_at),
            "schedule_id": self.schedule_id,
            "priority": self.priority,
            "concurrency_key": self.concurrency_key,
            "concurrency_limit": self.concurrency_limit,
            "wait_reason": self.wait_reason.value,
        }


@dataclass(frozen=True)
class TaskStats:
    """The caller's tasks counted per status; `active` = queued + running (scheduled tasks are not active)."""

    active: int = 0
    queued: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    timed_out: int = 0
    scheduled: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "active": self.active,
            "queued": self.queued,
            "running": self.running,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "timed_out": self.timed_out,
            "scheduled": self.scheduled,
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
    # Draining (Client.drain_worker, or shutting down): it takes no new task, and hands back what still runs
    # at drain_deadline.
    draining: bool = False
    drain_deadline: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "slots": self.slots,
            "busy": self.busy,
            "kinds": list(self.kinds),
            "last_heartbeat": _iso(self.last_heartbeat),
            "started_at": _iso(self.started_at),
            "draining": self.draining,
            "drain_deadline": _iso(self.drain_deadline),
        }


@dataclass(frozen=True)
class LogLine:
    """One line a task's handler logged (Client.logs): `stream` is "logger", "stdout" or "stderr"."""

    sequence: int
    at: datetime | None
    attempt: int
    stream: str
    # Level name for logger lines ("INFO", ...); empty for stdout and stderr.
    level: str
    text: str
    # Lines missing just before this one (dropped by the rate or storage bounds).
    dropped_before: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "sequence": self.sequence,
            "at": _iso(self.at),
            "attempt": self.attempt,
            "stream": self.stream,
            "level": self.level,
            "text": self.text,
            "dropped_before": self.dropped_before,
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


class OverlapPolicy(enum.StrEnum):
    """What a schedule's slot does while the previous firing's tasks are still active."""

    SKIP = "skip"  # the default: skip the slot
    ALLOW = "allow"  # fire anyway; firings may overlap
    CANCEL_PREVIOUS = "cancel_previous"  # cancel the previous firing's unfinished tasks, then fire


class CatchupPolicy(enum.StrEnum):
    """What happens to slots missed while no scheduler ran (slots passed while paused are never caught up)."""

    SKIP = "skip"  # drop them
    LATEST = "latest"  # the default: fire once for the latest missed slot
    ALL = "all"  # fire each, oldest first, up to catchup_limit of them


@dataclass(frozen=True)
class TaskTemplate:
    """The task each firing of a schedule submits (the fields of submit())."""

    name: str
    kind: str = ""
    payload: dict[str, Any] = field(default_factory=dict)
    workload: timedelta = timedelta(0)
    max_runtime: timedelta | None = None
    replicas: int = 1
    max_attempts: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "payload": self.payload,
            "workload_s": self.workload.total_seconds(),
            "max_runtime_s": self.max_runtime.total_seconds() if self.max_runtime is not None else None,
            "replicas": self.replicas,
            "max_attempts": self.max_attempts,
        }


@dataclass(frozen=True)
class Schedule:
    """A recurring schedule as the service last reported it: its spec, its state and what it fired.

    Exactly one of `cron` (a 5-field expression in `time_zone`, "" meaning UTC) and `interval` is set.
    `next_runs` are the next slots (empty while paused); `last_status` is the status the latest firing's
    first task has now (None before the first firing); `last_error` says why the latest due slot submitted
    nothing although its overlap policy let it fire (a per-user limit refused it), "" when it fired.
    """

    id: str
    name: str
    cron: str | None
    time_zone: str
    interval: timedelta | None
    task: TaskTemplate
    overlap: OverlapPolicy
    catchup: CatchupPolicy
    catchup_limit: int
    jitter: timedelta
    paused: bool
    next_runs: tuple[datetime, ...]
    last_slot: datetime | None
    last_batch_id: str
    last_status: TaskStatus | None
    last_error: str
    fired: int
    skipped: int
    version: int
    created_at: datetime | None
    updated_at: datetime | None

    @property
    def next_run(self) -> datetime | None:
        """The next slot, None while paused."""
        return self.next_runs[0] if self.next_runs else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "cron": self.cron,
            "time_zone": self.time_zone,
            "interval_s": self.interval.total_seconds() if self.interval is not None else None,
            "task": self.task.to_dict(),
            "overlap": self.overlap.value,
            "catchup": self.catchup.value,
            "catchup_limit": self.catchup_limit,
            "jitter_s": self.jitter.total_seconds(),
            "paused": self.paused,
            "next_runs": [_iso(t) for t in self.next_runs],
            "last_slot": _iso(self.last_slot),
            "last_batch_id": self.last_batch_id,
            "last_status": self.last_status.value if self.last_status is not None else None,
            "last_error": self.last_error,
            "fired": self.fired,
            "skipped": self.skipped,
            "version": self.version,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
        }


@dataclass(frozen=True)
class RateLimit:
    """At most `starts` task starts per `per` across the whole pool."""

    starts: int
    per: timedelta

    def to_dict(self) -> dict[str, Any]:
        return {"starts": self.starts, "per_s": self.per.total_seconds()}


@dataclass(frozen=True)
class KindControl:
    """How an operator set one task kind to run: paused or not, its rate limit (None: none), and how many of
    its tasks (every user's) wait for the pause or the limit."""

    kind: str
    paused: bool = False
    paused_at: datetime | None = None
    rate_limit: RateLimit | None = None
    waiting: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "paused": self.paused,
            "paused_at": _iso(self.paused_at),
            "rate_limit": self.rate_limit.to_dict() if self.rate_limit is not None else None,
            "waiting": self.waiting,
        }
