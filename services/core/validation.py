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
from resilienttask.v1 import scheduler_pb2, task_pb2
from services.core.errors import InvalidArgument
from services.core.transitions.user import DEFAULT_PRIORITY, MAX_PRIORITY, MIN_PRIORITY, Start, Submission

MAX_NAME_CHARS = 200
MAX_WORKLOAD_MS = 24 * 3600 * 1000
MIN_RUNTIME_MS = 1000
MAX_RUNTIME_MS = 24 * 3600 * 1000
DEFAULT_RUNTIME_MS = 3600 * 1000
MAX_REPLICAS = 50
DEFAULT_MAX_ATTEMPTS = 3
MAX_ATTEMPTS = 10
MAX_PAYLOAD_BYTES = 64 * 1024
MAX_REQUEST_ID_CHARS = 128
MAX_CONCURRENCY_KEY_CHARS = 128
MAX_CONCURRENCY_LIMIT = 1000
# The request_id prefix of the tasks a schedule fires (services/core/schedules/firing.py).
SCHEDULE_REQUEST_PREFIX = "schedule:"
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
DEFAULT_KIND = "sleep"
# Delayed tasks: a run_at this far in the past still starts (at once: a clock or a queue a little behind is not an
# error); none further ahead than MAX_DELAY, nor a longer delay (a year and a day: yearly work fits).
RUN_AT_PAST_GRACE_S = 60
MAX_DELAY = timedelta(days=366)


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
    name = request.name.strip()
    if not name:
        raise InvalidArgument("name", "is required")
    if len(name) > MAX_NAME_CHARS:
        raise InvalidArgument("name", f"must be at most {MAX_NAME_CHARS} characters")
    if _has_nul(name):
        raise InvalidArgument("name", "must not contain NUL characters")
    kind = request.kind or DEFAULT_KIND
    if kind not in kinds:
        raise InvalidArgument("kind", f"unknown kind {kind[:50]!r}; known kinds: {', '.join(kinds)}")
    workload_ms = duration_ms("workload", request.workload)
    if workload_ms > MAX_WORKLOAD_MS:
        raise InvalidArgument("workload", "must be at most 24h")
    if request.HasField("max_runtime"):
        max_runtime_ms = duration_ms("max_runtime", request.max_runtime)
        if not MIN_RUNTIME_MS <= max_runtime_ms <= MAX_RUNTIME_MS:
            raise InvalidArgument("max_runtime", "must be between 1s and 24h")
    else:
        # Long enough for the workload by default, so only a runaway task meets the ceiling.
        max_runtime_ms = min(MAX_RUNTIME_MS, max(DEFAULT_RUNTIME_MS, 2 * workload_ms))
    replicas = request.replicas or 1
    if not 1 <= replicas <= MAX_REPLICAS:
        raise InvalidArgument("replicas", f"must be between 1 and {MAX_REPLICAS}")
    max_attempts = request.max_attempts or DEFAULT_MAX_ATTEMPTS
    if not 1 <= max_attempts <= MAX_ATTEMPTS:
        raise InvalidArgument("max_attempts", f"must be between 1 and {MAX_ATTEMPTS}")
    if request.payload.ByteSize() > MAX_PAYLOAD_BYTES:
        raise InvalidArgument("payload", f"must be at most {MAX_PAYLOAD_BYTES // 1024} KiB")
    try:
        payload: dict[str, Any] = struct_to_dict(request.payload)
    except ValueError as exc:  # the only number JSON cannot hold: NaN and ±Infinity
        raise InvalidArgument("payload", "numbers must be finite (NaN and Infinity have no JSON form)") from exc
    if _has_nul(payload):
        raise InvalidArgument("payload", "must not contain NUL characters")
    request_id = request.request_id or str(uuid.uuid4())
    if len(request_id) > MAX_REQUEST_ID_CHARS or not request_id.isprintable():
        raise InvalidArgument("request_id", f"must be at most {MAX_REQUEST_ID_CHARS} printable characters")
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
    if value == 0:
        return DEFAULT_PRIORITY
    if not MIN_PRIORITY <= value <= MAX_PRIORITY:
        raise InvalidArgument(field, f"must be between {MIN_PRIORITY} and {MAX_PRIORITY} (0 means {DEFAULT_PRIORITY})")
    return value


def concurrency(key: str, limit: int) -> tuple[str | None, int]:
    """(key, limit) to store: a key needs a limit and a limit needs a key; (None, 0) without one."""
    if not key:
        if limit != 0:
            raise InvalidArgument("concurrency_limit", "must be 0 without a concurrency_key")
        return None, 0
    if len(key) > MAX_CONCURRENCY_KEY_CHARS or not key.isprintable():
        raise InvalidArgument("concurrency_key", f"must be at most {MAX_CONCURRENCY_KEY_CHARS} printable characters")
    if not 1 <= limit <= MAX_CONCURRENCY_LIMIT:
        raise InvalidArgument(
            "concurrency_limit", f"must be between 1 and {MAX_CONCURRENCY_LIMIT} with a concurrency_key"
        )
    return key, limit


def run_at_start(value: timestamp_pb2.Timestamp, now: datetime) -> Start | None:
    """The start of a task asked to run at `value`: None (at once) when it is not in the future."""
    if not 0 <= value.nanos < 1_000_000_000:
        raise InvalidArgument("run_at", "nanos must be between 0 and 999,999,999")
    now_s = now.timestamp()
    if value.seconds + value.nanos / 1e9 < now_s - RUN_AT_PAST_GRACE_S:
        raise InvalidArgument("run_at", f"must not be more than {RUN_AT_PAST_GRACE_S} s in the past")
    if value.seconds > now_s + MAX_DELAY.total_seconds():
        raise InvalidArgument("run_at", f"must be at most {MAX_DELAY.days} days ahead")
    run_at = value.ToDatetime(tzinfo=UTC)
    return Start(run_at=run_at) if run_at > now else None


def delay_start(field: str, value: duration_pb2.Duration) -> Start | None:
    """The start of a task asked to run after `value`: None (at once) for a zero delay."""
    delay_ms = duration_ms(field, value)
    if delay_ms > MAX_DELAY.total_seconds() * 1000:
        raise InvalidArgument(field, f"must be at most {MAX_DELAY.days} days")
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


def page_size(value: int) -> int:
    if value < 0 or value > MAX_PAGE_SIZE:
        raise InvalidArgument("page_size", f"must be between 0 and {MAX_PAGE_SIZE}")
    return value or DEFAULT_PAGE_SIZE


def encode_page_token(created_at: datetime, task_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{task_id}".encode()).decode()


def decode_page_token(token: str) -> tuple[datetime, str] | None:
    if not token:
        return None
    try:
        created, task_id = base64.urlsafe_b64decode(token.encode()).decode().split("|", 1)
        return datetime.fromisoformat(created), str(uuid.UUID(task_id))
    except (ValueError, UnicodeDecodeError, binascii.Error) as exc:
        raise InvalidArgument("page_token", "is malformed") from exc
