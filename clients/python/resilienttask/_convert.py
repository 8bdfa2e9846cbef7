"""Between protobuf messages and the SDK's values: requests out, models in."""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict, Unpack

from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from resilienttask.json_values import struct_to_dict, value_to_python
from resilienttask.models import (
    CatchupPolicy,
    KindControl,
    OverlapPolicy,
    RateLimit,
    Schedule,
    Session,
    Snapshot,
    Task,
    TaskStats,
    TaskStatus,
    TaskTemplate,
    TaskUpdate,
    User,
    WaitReason,
    WatchEvent,
    Worker,
    WorkersUpdate,
)
from resilienttask.v1 import auth_pb2, operator_pb2, schedule_pb2, scheduler_pb2, task_pb2

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
    TaskStatus.SCHEDULED: task_pb2.TASK_STATUS_SCHEDULED,
}
_STATUS_FROM_PROTO = {number: status for status, number in _STATUS_TO_PROTO.items()}
_OVERLAP_TO_PROTO: dict[OverlapPolicy, schedule_pb2.OverlapPolicy] = {
    OverlapPolicy.SKIP: schedule_pb2.OVERLAP_POLICY_SKIP,
    OverlapPolicy.ALLOW: schedule_pb2.OVERLAP_POLICY_ALLOW,
    OverlapPolicy.CANCEL_PREVIOUS: schedule_pb2.OVERLAP_POLICY_CANCEL_PREVIOUS,
}
_OVERLAP_FROM_PROTO = {number: policy for policy, number in _OVERLAP_TO_PROTO.items()}
_CATCHUP_TO_PROTO: dict[CatchupPolicy, schedule_pb2.CatchupPolicy] = {
    CatchupPolicy.SKIP: schedule_pb2.CATCHUP_POLICY_SKIP,
    CatchupPolicy.LATEST: schedule_pb2.CATCHUP_POLICY_LATEST,
    CatchupPolicy.ALL: schedule_pb2.CATCHUP_POLICY_ALL,
}
_CATCHUP_FROM_PROTO = {number: policy for policy, number in _CATCHUP_TO_PROTO.items()}


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


def to_timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    """A Timestamp from an aware datetime; a naive one is refused (local time or UTC? the SDK will not guess)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"a time must carry its time zone (e.g. datetime.now(UTC) + timedelta(...)), got {value!r}")
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value.astimezone(UTC))
    return stamp


class TaskOptions(TypedDict, total=False):
    """A task's fields besides its name: what submit() takes and what a schedule's firings submit. The bounds of
    each are the contract's (resilienttask.limits.field_limits(SubmitTaskRequest, field)).

    kind: the handler kind ("" means the built-in simulated workload "sleep"); payload: the handler's
    arguments, a JSON object; workload: simulated work, seconds or a timedelta (default 0); max_runtime: the
    hard ceiling after which the task is killed (default: the service's); replicas: copies submitted atomically
    (default 1); max_attempts: attempts before dead-lettering (default: the service's).
    """

    kind: str
    payload: Mapping[str, Any] | None
    workload: Seconds
    max_runtime: Seconds | None
    replicas: int
    max_attempts: int | None


class SubmitOptions(TaskOptions, total=False):
    """submit()'s keyword arguments, the one definition the clients and the CLI use: TaskOptions, and

    request_id: the idempotency key (generated when none is given, so retries after UNAVAILABLE reuse it and
    never create duplicates); run_at (an aware datetime) or delay (seconds or a timedelta), at most one: the
    tasks are SCHEDULED until then; priority: the higher the more urgent, 0 for the default (3);
    concurrency_key with concurrency_limit: at most that many of your tasks with the key run at once.
    """

    request_id: str | None
    run_at: datetime | None
    delay: Seconds | None
    priority: int
    concurrency_key: str
    concurrency_limit: int


def _refuse_unknown(options: Mapping[str, object], known: frozenset[str], what: str) -> None:
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown {what} option(s): {', '.join(unknown)}")


def _fill_task(message: scheduler_pb2.SubmitTaskRequest | schedule_pb2.TaskTemplate, options: TaskOptions) -> None:
    """Set the TaskOptions fields, which the submit request and a schedule's template name alike."""
    message.kind = options.get("kind", "")
    message.workload.CopyFrom(to_duration(options.get("workload", 0)))
    message.replicas = options.get("replicas", 1)
    message.max_attempts = options.get("max_attempts") or 0
    max_runtime = options.get("max_runtime")
    if max_runtime is not None:
        message.max_runtime.CopyFrom(to_duration(max_runtime))
    payload = options.get("payload")
    if payload:
        message.payload.update(dict(payload))


def submit_request(name: str, **options: Unpack[SubmitOptions]) -> scheduler_pb2.SubmitTaskRequest:
    """The SubmitTask request; a request_id is generated here so retries of this call are idempotent.

    At most one of run_at and delay: the task is SCHEDULED until then.
    """
    _refuse_unknown(options, SubmitOptions.__optional_keys__, "submit")
    run_at, delay = options.get("run_at"), options.get("delay")
    if run_at is not None and delay is not None:
        raise ValueError("give run_at or delay, not both")
    request = scheduler_pb2.SubmitTaskRequest(
        name=name,
        request_id=options.get("request_id") or str(uuid.uuid4()),
        priority=options.get("priority", 0),
        concurrency_key=options.get("concurrency_key", ""),
        concurrency_limit=options.get("concurrency_limit", 0),
    )
    _fill_task(request, options)
    if run_at is not None:
        request.run_at.CopyFrom(to_timestamp(run_at))
    elif delay is not None:
        request.delay.CopyFrom(to_duration(delay))
    return request


def retry_request(task_id: str, delay: Seconds | None) -> scheduler_pb2.RetryTaskRequest:
    request = scheduler_pb2.RetryTaskRequest(task_id=task_id)
    if delay is not None:
        request.delay.CopyFrom(to_duration(delay))
    return request


class ScheduleOptions(TaskOptions, total=False):
    """A schedule's spec besides its name, as keyword arguments of create_schedule() and update_schedule().

    Timing, exactly one of:
      cron: a 5-field cron expression ("*/5 * * * *"), with time_zone: an IANA zone ("Europe/Paris"; default UTC);
      interval: seconds or a timedelta, from the schedule's creation (or last update).
    Every bound is the contract's (resilienttask.limits.field_limits(ScheduleSpec, field)).
    The task each firing submits: task_name (default: the schedule's name) and the TaskOptions (kind, payload,
    workload, max_runtime, replicas, max_attempts).
    Policies: overlap (OverlapPolicy, default SKIP), catchup (CatchupPolicy, default LATEST), catchup_limit
    (with CatchupPolicy.ALL, default 10), jitter (a random delay of each firing, below the interval).
    """

    cron: str | None
    time_zone: str | None
    interval: Seconds | None
    task_name: str | None
    overlap: OverlapPolicy | str | None
    catchup: CatchupPolicy | str | None
    catchup_limit: int | None
    jitter: Seconds | None


def _overlap_number(value: OverlapPolicy | str | None) -> schedule_pb2.OverlapPolicy:
    return _OVERLAP_TO_PROTO[OverlapPolicy(value)] if value else schedule_pb2.OVERLAP_POLICY_UNSPECIFIED


def _catchup_number(value: CatchupPolicy | str | None) -> schedule_pb2.CatchupPolicy:
    return _CATCHUP_TO_PROTO[CatchupPolicy(value)] if value else schedule_pb2.CATCHUP_POLICY_UNSPECIFIED


def schedule_spec(name: str, options: ScheduleOptions) -> schedule_pb2.ScheduleSpec:
    """The ScheduleSpec for create and update; refuses unknown options and a timing that is not exactly one."""
    _refuse_unknown(options, ScheduleOptions.__optional_keys__, "schedule")
    cron, interval, time_zone = options.get("cron"), options.get("interval"), options.get("time_zone")
    if (cron is None) == (interval is None):
        raise ValueError("give exactly one of cron and interval")
    if time_zone is not None and cron is None:
        raise ValueError("time_zone only applies to a cron schedule")
    template = schedule_pb2.TaskTemplate(name=options.get("task_name") or name)
    _fill_task(template, options)
    jitter = options.get("jitter")
    spec = schedule_pb2.ScheduleSpec(
        name=name,
        task=template,
        overlap=_overlap_number(options.get("overlap")),
        catchup=_catchup_number(options.get("catchup")),
        catchup_limit=options.get("catchup_limit") or 0,
    )
    if cron is not None:
        spec.cron.CopyFrom(schedule_pb2.CronTiming(expression=cron, time_zone=time_zone or ""))
    else:
        assert interval is not None
        spec.interval.CopyFrom(to_duration(interval))
    if jitter is not None:
        spec.jitter.CopyFrom(to_duration(jitter))
    return spec


def spec_options(schedule: Schedule) -> ScheduleOptions:
    """The options that give a schedule's spec again: what a partial update starts from."""
    template = schedule.task
    options = ScheduleOptions(
        task_name=template.name,
        kind=template.kind,
        payload=template.payload,
        workload=template.workload,
        max_runtime=template.max_runtime,
        replicas=template.replicas,
        max_attempts=template.max_attempts or None,
        overlap=schedule.overlap,
        catchup=schedule.catchup,
        catchup_limit=schedule.catchup_limit or None,
        jitter=schedule.jitter,
    )
    if schedule.cron is not None:
        options["cron"] = schedule.cron
        options["time_zone"] = schedule.time_zone or None
    else:
        options["interval"] = schedule.interval
    return options


# -- replies -----------------------------------------------------------------------------------
def _moment(message: timestamp_pb2.Timestamp) -> datetime:
    return datetime.fromtimestamp(message.seconds + message.nanos / 1e9, tz=UTC)


def _time(message: timestamp_pb2.Timestamp, present: bool) -> datetime | None:
    return _moment(message) if present else None


# For the modules next to this one (search): a time that may be unset, a status number.
time_from_proto = _time


def status_from_number(number: int) -> TaskStatus:
    return _STATUS_FROM_PROTO.get(number, TaskStatus.UNSPECIFIED)  # type: ignore[call-overload]


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
        payload=struct_to_dict(message.payload) if message.HasField("payload") else {},
        result=_value(message.result) if message.HasField("result") else None,
        summary=message.summary,
        run_at=_time(message.run_at, message.HasField("run_at")),
        schedule_id=message.schedule_id,
        priority=message.priority,
        concurrency_key=message.concurrency_key,
        concurrency_limit=message.concurrency_limit,
        wait_reason=_WAIT_REASON_FROM_PROTO.get(message.wait_reason, WaitReason.NONE),
    )


_WAIT_REASON_FROM_PROTO = {
    task_pb2.WAIT_REASON_SLOT_SHARE: WaitReason.SLOT_SHARE,
    task_pb2.WAIT_REASON_CONCURRENCY_KEY: WaitReason.CONCURRENCY_KEY,
    task_pb2.WAIT_REASON_RATE_LIMIT: WaitReason.RATE_LIMIT,
    task_pb2.WAIT_REASON_KIND_PAUSED: WaitReason.KIND_PAUSED,
}


def kind_control_from_proto(message: operator_pb2.KindControl) -> KindControl:
    limit = message.rate_limit if message.HasField("rate_limit") else None
    return KindControl(
        kind=message.kind,
        paused=message.paused,
        paused_at=_time(message.paused_at, message.HasField("paused_at")),
        rate_limit=RateLimit(limit.starts, _timedelta(limit.period)) if limit is not None else None,
        waiting=message.waiting,
    )


def rate_limit_request(kind: str, starts: int, per: Seconds) -> operator_pb2.SetKindRateLimitRequest:
    request = operator_pb2.SetKindRateLimitRequest(kind=kind)
    request.rate_limit.starts = starts
    request.rate_limit.period.CopyFrom(to_duration(per))
    return request


def _value(message: struct_pb2.Value) -> Any:
    return value_to_python(message)


def stats_from_proto(message: task_pb2.TaskStats) -> TaskStats:
    return TaskStats(
        active=message.active,
        queued=message.queued,
        running=message.running,
        succeeded=message.succeeded,
        failed=message.failed,
        cancelled=message.cancelled,
        timed_out=message.timed_out,
        scheduled=message.scheduled,
    )


def schedule_from_proto(message: schedule_pb2.Schedule) -> Schedule:
    spec, template = message.spec, message.spec.task
    timing = spec.WhichOneof("timing")
    return Schedule(
        id=message.id,
        name=spec.name,
        cron=spec.cron.expression if timing == "cron" else None,
        time_zone=spec.cron.time_zone if timing == "cron" else "",
        interval=_timedelta(spec.interval) if timing == "interval" else None,
        task=TaskTemplate(
            name=template.name,
            kind=template.kind,
            payload=struct_to_dict(template.payload) if template.HasField("payload") else {},
            workload=_timedelta(template.workload),
            max_runtime=_timedelta(template.max_runtime) if template.HasField("max_runtime") else None,
            replicas=template.replicas or 1,
            max_attempts=template.max_attempts,
        ),
        overlap=_OVERLAP_FROM_PROTO.get(spec.overlap, OverlapPolicy.SKIP),
        catchup=_CATCHUP_FROM_PROTO.get(spec.catchup, CatchupPolicy.LATEST),
        catchup_limit=spec.catchup_limit,
        jitter=_timedelta(spec.jitter),
        paused=message.paused,
        next_runs=tuple(_moment(t) for t in message.next_runs),
        last_slot=_time(message.last_slot, message.HasField("last_slot")),
        last_batch_id=message.last_batch_id,
        last_status=_STATUS_FROM_PROTO.get(message.last_status) if message.last_status else None,
        last_error=message.last_error,
        fired=message.fired,
        skipped=message.skipped,
        version=message.version,
        created_at=_time(message.created_at, message.HasField("created_at")),
        updated_at=_time(message.updated_at, message.HasField("updated_at")),
    )


def worker_from_proto(message: task_pb2.Worker) -> Worker:
    return Worker(
        id=message.id,
        slots=message.slots,
        busy=message.busy,
        kinds=tuple(message.kinds),
        last_heartbeat=_time(message.last_heartbeat, message.HasField("last_heartbeat")),
        started_at=_time(message.started_at, message.HasField("started_at")),
        draining=message.draining,
        drain_deadline=_time(message.drain_deadline, message.HasField("drain_deadline")),
    )


def drain_request(worker_id: str, grace: Seconds | None) -> operator_pb2.DrainWorkerRequest:
    request = operator_pb2.DrainWorkerRequest(worker_id=worker_id)
    if grace is not None:
        request.grace.CopyFrom(to_duration(grace))
    return request


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
