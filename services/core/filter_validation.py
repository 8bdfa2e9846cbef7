"""Checks of TaskFilter and TaskSelection: every refusal is INVALID_ARGUMENT naming the field by its path
(e.g. "filter.name_contains", "selection.ids.task_ids[3]")."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from google.protobuf import timestamp_pb2

from resilienttask.v1 import scheduler_pb2, task_pb2
from services.core import validation
from services.core.errors import InvalidArgument
from services.core.field_limits import Rule, rule
from services.core.task_filters import TaskQuery

NAME_CONTAINS = rule(scheduler_pb2.TaskFilter, "name_contains")
ID_PREFIX = rule(scheduler_pb2.TaskFilter, "id_prefix")
KIND = rule(scheduler_pb2.TaskFilter, "kind")
CONCURRENCY_KEY = rule(scheduler_pb2.TaskFilter, "concurrency_key")
TASK_IDS = rule(scheduler_pb2.TaskIds, "task_ids")
# Tasks a bulk call takes per page: CancelTasks, RetryTasks and DeleteTasks declare the same bounds (0 means the most).
BULK_PAGE = rule(scheduler_pb2.CancelTasksRequest, "page_size")
MAX_BULK_PAGE = BULK_PAGE.limits.max_value or 0
# A canonical UUID: 8-4-4-4-12 lower-case hex digits; an id prefix is a prefix of one.
_UUID_LAYOUT = "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"
_ID_PREFIX = re.compile(r"[0-9a-f-]{1,36}")
# Timestamp's own range: 0001-01-01 to 9999-12-31.
_MIN_SECONDS = -62_135_596_800
_MAX_SECONDS = 253_402_300_799
_KNOWN_STATUSES = frozenset(task_pb2.TaskStatus.values()) - {task_pb2.TASK_STATUS_UNSPECIFIED}


def _text(field: str, value: str, bounds: Rule) -> str:
    bounds.text(field, value)
    if "\x00" in value:
        raise InvalidArgument(field, "must not contain NUL characters")
    return value


def id_range(field: str, prefix: str) -> tuple[str, str]:
    """The inclusive bounds of the UUIDs starting with `prefix` (dashes where a UUID has them)."""
    prefix = ID_PREFIX.text(field, prefix).lower()
    if not _ID_PREFIX.fullmatch(prefix) or any((c == "-") != (_UUID_LAYOUT[i] == "-") for i, c in enumerate(prefix)):
        raise InvalidArgument(field, "must be the start of a task id (hex digits, dashes as in 8-4-4-4-12)")
    digits = prefix.replace("-", "")
    return str(uuid.UUID(digits.ljust(32, "0"))), str(uuid.UUID(digits.ljust(32, "f")))


def _time(field: str, value: timestamp_pb2.Timestamp) -> datetime:
    if not 0 <= value.nanos < 1_000_000_000:
        raise InvalidArgument(field, "nanos must be between 0 and 999,999,999")
    if not _MIN_SECONDS <= value.seconds <= _MAX_SECONDS:
        raise InvalidArgument(field, "must be between years 1 and 9999")
    return value.ToDatetime(tzinfo=UTC)


def task_filter(message: scheduler_pb2.TaskFilter, field: str = "filter") -> TaskQuery:
    """The checked TaskFilter; `field` is its path in the request, for the refusals' names."""
    statuses = frozenset(message.statuses)
    unknown = statuses - _KNOWN_STATUSES
    if unknown:
        raise InvalidArgument(f"{field}.statuses", f"unknown status {min(unknown)}")
    created_after = created_before = None
    if message.HasField("created_after"):
        created_after = _time(f"{field}.created_after", message.created_after)
    if message.HasField("created_before"):
        created_before = _time(f"{field}.created_before", message.created_before)
    if created_after is not None and created_before is not None and created_before <= created_after:
        raise InvalidArgument(f"{field}.created_before", "must be later than created_after")
    return TaskQuery(
        status_sets=(statuses,) if statuses else (),
        batch_ids=(validation.uuid_field(f"{field}.batch_id", message.batch_id),) if message.batch_id else (),
        name_contains=_text(f"{field}.name_contains", message.name_contains, NAME_CONTAINS),
        id_range=id_range(f"{field}.id_prefix", message.id_prefix) if message.id_prefix else None,
        kind=_text(f"{field}.kind", message.kind, KIND),
        created_after=created_after,
        created_before=created_before,
        schedule_id=validation.uuid_field(f"{field}.schedule_id", message.schedule_id) if message.schedule_id else "",
        dead_lettered=message.dead_lettered,
        concurrency_key=_text(f"{field}.concurrency_key", message.concurrency_key, CONCURRENCY_KEY),
    )


def list_query(request: scheduler_pb2.ListTasksRequest) -> TaskQuery:
    """ListTasks' status and batch_id, and its filter, as one query (all ANDed)."""
    query = task_filter(request.filter)
    status = validation.status_filter(request.status)
    batch_id = validation.uuid_field("batch_id", request.batch_id) if request.batch_id else ""
    return TaskQuery(
        status_sets=((frozenset({status}),) if status else ()) + query.status_sets,
        batch_ids=((batch_id,) if batch_id else ()) + query.batch_ids,
        name_contains=query.name_contains,
        id_range=query.id_range,
        kind=query.kind,
        created_after=query.created_after,
        created_before=query.created_before,
        schedule_id=query.schedule_id,
        dead_lettered=query.dead_lettered,
        concurrency_key=query.concurrency_key,
    )


@dataclass(frozen=True)
class Selection:
    """A checked TaskSelection with its page: listed ids (taken whole, in one call), or a filter taken page by
    page after the keyset position `after`."""

    ids: tuple[str, ...] | None
    query: TaskQuery | None
    page_size: int
    after: tuple[datetime, str] | None


def selection(message: scheduler_pb2.TaskSelection, page_size: int, page_token: str) -> Selection:
    """The checked selection of a bulk call (CancelTasks, RetryTasks, DeleteTasks)."""
    size = BULK_PAGE.number("page_size", page_size) or MAX_BULK_PAGE
    target = message.WhichOneof("target")
    if target == "ids":
        if page_token:
            raise InvalidArgument("page_token", "applies to filter selections only (listed ids are taken at once)")
        listed = message.ids.task_ids
        TASK_IDS.items("selection.ids.task_ids", listed, "task ids")
        ids = [validation.uuid_field(f"selection.ids.task_ids[{i}]", value) for i, value in enumerate(listed)]
        return Selection(tuple(dict.fromkeys(ids)), None, size, None)
    if target == "filter":
        query = task_filter(message.filter, "selection.filter")
        return Selection(None, query, size, validation.decode_page_token(page_token))
    raise InvalidArgument("selection", "is required: task ids or a filter")
