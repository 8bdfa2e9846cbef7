"""Checks of user input: every refusal is INVALID_ARGUMENT naming the field."""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import duration_pb2, timestamp_pb2

from resilienttask.json_values import struct_to_dict
from resilienttask.limits import duration_text
from resilienttask.v1 import scheduler_pb2, task_pb2
from services.core.errors import InvalidArgument
from services.core.field_limits import Rule, rule
from services.core.transitions.user import DEFAULT_PRIORITY, Start, Submission

# The bounds of SubmitTaskRequest's fields, as the contract declares them (proto/resilienttask/v1/limits.proto).
_SUBMIT = scheduler_pb2.SubmitTaskRequest
NAME = rule(_SUBMIT, "name")
PAYLOAD = rule(_SUBMIT, "payload")
WORKLOAD = rule(_SUBMIT, "workload")
MAX_RUNTIME = rule(_SUBMIT, "max_runtime")
REPLICAS = rule(_SUBMIT, "replicas")
ATTEMPTS = rule(_SUBMIT, "max_attempts")
REQUEST_ID = rule(_SUBMIT, "request_id")
PRIORITY = rule(_SUBMIT, "priority")
CONCURRENCY_KEY = rule(_SUBMIT, "concurrency_key")
CONCURRENCY_LIMIT = rule(_SUBMIT, "concurrency_limit")
DELAY = rule(_SUBMIT, "delay")
RUN_AT = rule(_SUBMIT, "run_at")
PAGE_SIZE = rule(scheduler_pb2.ListTasksRequest, "page_size")
MAX_NAME_CHARS = NAME.limits.max_chars or 0
MAX_RUNTIME_MS = MAX_RUNTIME.limits.max_duration_ms or 0
MAX_PAYLOAD_BYTES = PAYLOAD.limits.max_bytes or 0
MAX_REQUEST_ID_CHARS = REQUEST_ID.limits.max_chars or 0
DEFAULT_RUNTIME_MS = 3600 * 1000
DEFAULT_MAX_ATTEMPTS = 3
# The request_id prefix of the tasks a schedule fires (services/core/schedules/firing.py).
SCHEDULE_REQUEST_PREFIX = "schedule:"
DEFAULT_PAGE_SIZE = 50
DEFAULT_KIND = "sleep"
# Delayed tasks: a run_at this far in the past still starts (at once: a clock or a queue a little behind is not an
# error); none further ahead than MAX_RUN_AT_AHEAD, nor a longer delay (a year and a day: yearly work fits).
RUN_AT_PAST_GRACE_S = (RUN_AT.limits.max_past_ms or 0) // 1000
MAX_DELAY = timedelta(milliseconds=DELAY.limits.max_duration_ms or 0)
MAX_RUN_AT_AHEAD = timedelta(milliseconds=RUN_AT.limits.max_ahead_ms or 0)


def duration_ms(field: str, value: duration_pb2.Duration) -> int:
    if value.seconds < 0 or value.nanos < 0:
        raise InvalidArgument(field, "must not be negative")
    if value.nanos >= 1_000_000_000:
        raise InvalidArgument(field, "nanos must be below one second")
    return value.seconds * 1000 + value.nanos // 1_000_000


def _has_nul(value: Any) -> bool:
    """PostgreSQL text and jsonb cannot hold U+0000, so it is refused up front rather than failing the insert."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def submission(
    request: scheduler_pb2.SubmitTaskRequest, kinds: Sequence[str], *, from_schedule: bool = False
) -> Submission:
    """The checked submission. Only a schedule's firing (from_schedule) may use a request_id of the form its
    slots use: a user's own task taking a slot's key would stand in for that slot's run."""
    name = NAME.text("name", request.name.strip())
    if _has_nul(name):
        raise InvalidArgument("name", "must not contain NUL characters")
    kind = request.kind or DEFAULT_KIND
    if kind not in kinds:
        raise InvalidArgument("kind", f"unknown kind {kind[:50]!r}; known kinds: {', '.join(kinds)}")
    workload_ms = WORKLOAD.duration("workload", duration_ms("workload", request.workload))
    if request.HasField("max_runtime"):
        max_runtime_ms = MAX_RUNTIME.duration("max_runtime", duration_ms("max_runtime", request.max_runtime))
    else:
        # Long enough for the workload by default, so only a runaway task meets the ceiling.
        max_runtime_ms = min(MAX_RUNTIME_MS, max(DEFAULT_RUNTIME_MS, 2 * workload_ms))
    replicas = REPLICAS.number("replicas", request.replicas) or 1
    max_attempts = ATTEMPTS.number("max_attempts", request.max_attempts) or DEFAULT_MAX_ATTEMPTS
    PAYLOAD.size("payload", request.payload)
    try:
        payload: dict[str, Any] = struct_to_dict(request.payload)
    except ValueError as exc:  # the only number JSON cannot hold: NaN and ±Infinity
        raise InvalidArgument("payload", "numbers must be finite (NaN and Infinity have no JSON form)") from exc
    if _has_nul(payload):
        raise InvalidArgument("payload", "must not contain NUL characters")
    request_id = printable("request_id", request.request_id or str(uuid.uuid4()), REQUEST_ID)
    if request_id.startswith(SCHEDULE_REQUEST_PREFIX) and not from_schedule:
        raise InvalidArgument(
            "request_id", f"must not start with {SCHEDULE_REQUEST_PREFIX!r} (kept for schedules' firings)"
        )
    start = None
    if request.HasField("run_at"):
        start = run_at_start(request.run_at, datetime.now(UTC))
    elif request.HasField("delay"):
        start = delay_start("delay", request.delay)
    concurrency_key, concurrency_limit = concurrency(request.concurrency_key, request.concurrency_limit)
    return Submission(
        name=name,
        kind=kind,
        payload=payload,
        workload_ms=workload_ms,
        max_runtime_ms=max_runtime_ms,
        replicas=replicas,
        max_attempts=max_attempts,
        request_id=request_id,
        start=start,
        priority=priority(request.priority),
        concurrency_key=concurrency_key,
        concurrency_limit=concurrency_limit,
    )


def priority(value: int, field: str = "priority") -> int:
    """The priority to store: 0 (unset) means the default."""
    return PRIORITY.number(field, value) or DEFAULT_PRIORITY


def concurrency(key: str, limit: int) -> tuple[str | None, int]:
    """(key, limit) to store: a key needs a limit and a limit needs a key; (None, 0) without one."""
    if not key:
        if limit != 0:
            raise InvalidArgument("concurrency_limit", "must be 0 without a concurrency_key")
        return None, 0
    printable("concurrency_key", key, CONCURRENCY_KEY)
    try:
        CONCURRENCY_LIMIT.number("concurrency_limit", limit)  # 0 included: a key needs a limit
    except InvalidArgument as exc:
        raise InvalidArgument(exc.field, f"{exc.reason} with a concurrency_key") from None
    return key, limit


def printable(field: str, value: str, bounds: Rule) -> str:
    """A string within its declared length, of printable characters only (keys and ids shown and logged)."""
    bounds.text(field, value)
    if not value.isprintable():
        raise InvalidArgument(field, f"must be at most {bounds.limits.max_chars} printable characters")
    return value


def run_at_start(value: timestamp_pb2.Timestamp, now: datetime) -> Start | None:
    """The start of a task asked to run at `value`: None (at once) when it is not in the future."""
    if not 0 <= value.nanos < 1_000_000_000:
        raise InvalidArgument("run_at", "nanos must be between 0 and 999,999,999")
    now_s = now.timestamp()
    if value.seconds + value.nanos / 1e9 < now_s - RUN_AT_PAST_GRACE_S:
        raise InvalidArgument("run_at", f"must not be more than {RUN_AT_PAST_GRACE_S} s in the past")
    if value.seconds > now_s + MAX_RUN_AT_AHEAD.total_seconds():
        raise InvalidArgument("run_at", f"must be at most {duration_text(RUN_AT.limits.max_ahead_ms or 0)} ahead")
    run_at = value.ToDatetime(tzinfo=UTC)
    return Start(run_at=run_at) if run_at > now else None


def delay_start(field: str, value: duration_pb2.Duration, bounds: Rule = DELAY) -> Start | None:
    """The start of a task asked to run after `value`: None (at once) for a zero delay."""
    delay_ms = bounds.duration(field, duration_ms(field, value))
    return Start(delay_ms=delay_ms) if delay_ms > 0 else None


def uuid_field(field: str, value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except (ValueError, AttributeError) as exc:
        raise InvalidArgument(field, "must be a UUID") from exc


def status_filter(value: int) -> int:
    if value not in task_pb2.TaskStatus.values():
        raise InvalidArgument("status", "unknown status")
    return value


def page_size(value: int, bounds: Rule = PAGE_SIZE) -> int:
    """ListTasks' or ListSchedules' page size (their declarations are alike); 0 means the default."""
    return bounds.number("page_size", value) or DEFAULT_PAGE_SIZE


def encode_page_token(created_at: datetime, task_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{task_id}".encode()).decode()


def decode_page_token(token: str) -> tuple[datetime, str] | None:
    if not token:
        return None
    try:
        created, task_id = base64.urlsafe_b64decode(token.encode()).decode().split("|", 1)
        moment = datetime.fromisoformat(created)
        # Ours are aware and within PostgreSQL's range; a made-up one (naive, or a year-1 time a zone offset
        # moves out of range) would otherwise fail in the driver, as INTERNAL.
        if moment.tzinfo is None:
            raise ValueError("a page token's time must name its zone")
        moment.astimezone(UTC)
        return moment, str(uuid.UUID(task_id))
    except (ValueError, OverflowError, UnicodeDecodeError, binascii.Error) as exc:
        raise InvalidArgument("page_token", "is malformed") from exc
