"""Checks of a ScheduleSpec: every refusal is INVALID_ARGUMENT naming the field (spec.cron.expression, ...).

The task template obeys SubmitTask's bounds, checked by the same code (validation.submission).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from resilienttask.v1 import schedule_pb2, scheduler_pb2
from services.core import validation
from services.core.errors import InvalidArgument
from services.core.field_limits import rule
from services.core.schedules.model import timing_of
from services.core.schedules.timing import TimingError, check_cron, shortest_gap, zone
from services.core.transitions.user import Submission

NAME = rule(schedule_pb2.ScheduleSpec, "name")
INTERVAL = rule(schedule_pb2.ScheduleSpec, "interval")
JITTER = rule(schedule_pb2.ScheduleSpec, "jitter")
CATCHUP_LIMIT = rule(schedule_pb2.ScheduleSpec, "catchup_limit")
EXPRESSION = rule(schedule_pb2.CronTiming, "expression")
REQUEST_ID = rule(schedule_pb2.CreateScheduleRequest, "request_id")


def template_request(template: schedule_pb2.TaskTemplate, request_id: str) -> scheduler_pb2.SubmitTaskRequest:
    """The SubmitTask request a firing makes of the template."""
    request = scheduler_pb2.SubmitTaskRequest(
        name=template.name,
        kind=template.kind,
        replicas=template.replicas,
        max_attempts=template.max_attempts,
        request_id=request_id,
        priority=template.priority,
        concurrency_key=template.concurrency_key,
        concurrency_limit=template.concurrency_limit,
    )
    request.payload.CopyFrom(template.payload)
    request.workload.CopyFrom(template.workload)
    if template.HasField("max_runtime"):
        request.max_runtime.CopyFrom(template.max_runtime)
    return request


def template_submission(
    template: schedule_pb2.TaskTemplate, request_id: str, schedule_id: str, kinds: Sequence[str] | None = None
) -> Submission:
    """The submission of one firing; `kinds` None: whatever kind the template names (checked when stored)."""
    kind = template.kind or validation.DEFAULT_KIND
    try:
        spec = validation.submission(
            template_request(template, request_id), [kind] if kinds is None else kinds, from_schedule=True
        )
    except InvalidArgument as exc:
        raise InvalidArgument(f"spec.task.{exc.field}", exc.reason) from exc
    return dataclasses.replace(spec, schedule_id=schedule_id)


def spec(value: schedule_pb2.ScheduleSpec, kinds: Sequence[str]) -> schedule_pb2.ScheduleSpec:
    """The spec, checked whole, with the cron expression's fields separated by single spaces."""
    checked = schedule_pb2.ScheduleSpec()
    checked.CopyFrom(value)
    name = NAME.text("spec.name", value.name.strip())
    if "\x00" in name:
        raise InvalidArgument("spec.name", "must not contain NUL characters")
    checked.name = name
    timing = value.WhichOneof("timing")
    if timing is None:
        raise InvalidArgument("spec.timing", "set either cron or interval")
    if timing == "cron":
        try:
            checked.cron.expression = check_cron(EXPRESSION.text("spec.cron.expression", value.cron.expression))
            zone(value.cron.time_zone)
        except TimingError as exc:
            raise InvalidArgument(f"spec.cron.{exc.field}", exc.reason) from exc
        interval_ms = None
    else:
        interval_ms = INTERVAL.duration("spec.interval", validation.duration_ms("spec.interval", value.interval))
        checked.interval.FromMilliseconds(interval_ms)
    if not value.HasField("task"):
        raise InvalidArgument("spec.task", "is required")
    template_submission(value.task, "check", "", kinds)
    if value.overlap not in schedule_pb2.OverlapPolicy.values():
        raise InvalidArgument("spec.overlap", "unknown overlap policy")
    if value.catchup not in schedule_pb2.CatchupPolicy.values():
        raise InvalidArgument("spec.catchup", "unknown catch-up policy")
    CATCHUP_LIMIT.number("spec.catchup_limit", value.catchup_limit)
    jitter_ms = JITTER.duration("spec.jitter", validation.duration_ms("spec.jitter", value.jitter))
    if interval_ms is not None and jitter_ms >= interval_ms:
        raise InvalidArgument("spec.jitter", "must be less than the interval")
    if interval_ms is None and jitter_ms > 0:
        gap = shortest_gap(timing_of(checked, datetime.now(UTC)), datetime.now(UTC))
        if gap is not None and timedelta(milliseconds=jitter_ms) >= gap:
            raise InvalidArgument("spec.jitter", f"must be less than the shortest time between two slots ({gap})")
    return checked


def request_id(value: str) -> str:
    return validation.printable("request_id", value, REQUEST_ID)
