"""The filter options `rtask ls` and `rtask bulk` share (--name, --id, --batch, --kind, --status, --since, --until,
--dead-lettered, --schedule, --concurrency-key), gathered into one TaskSelection for the command."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Any, TypeVar

import click

from resilienttask.cli.durations import parse_duration
from resilienttask.models import TaskStatus
from resilienttask.search import TaskFilter

F = TypeVar("F", bound=Callable[..., Any])
STATUS_NAMES = [s.value for s in TaskStatus if s is not TaskStatus.UNSPECIFIED]
_TIME_OF_DAY = re.compile(r"\d{1,2}:\d{2}(?::\d{2})?")
PAST_FORMS = "e.g. 2h (two hours ago), 2026-12-24, 2026-12-24T18:00, 2026-12-24T17:00Z or 18:00 (the last 18:00)"


def parse_past_time(text: str, *, now: datetime | None = None) -> datetime:
    """A moment in the past as people type it for --since/--until: a duration ago, a date (its midnight, local),
    a date and time (local unless it says its offset), or a time of day (its latest occurrence)."""
    value = text.strip()
    current = now or datetime.now(UTC).astimezone()
    try:
        return current - parse_duration(value)
    except ValueError:
        pass
    if _TIME_OF_DAY.fullmatch(value):
        hour, minute, *second = (int(part) for part in value.split(":"))
        try:
            clock = time(hour, minute, second[0] if second else 0)
        except ValueError as exc:
            raise ValueError(f"{text!r} is not a time of day; {PAST_FORMS}") from exc
        local = current.astimezone()
        moment = datetime.combine(local.date(), clock).astimezone()
        return moment if moment <= current else moment - timedelta(days=1)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a time; {PAST_FORMS}") from exc
    return parsed if parsed.tzinfo is not None else parsed.astimezone()


class PastTimeType(click.ParamType):
    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            return parse_past_time(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


PAST_TIME = PastTimeType()


@dataclass(frozen=True)
class Selection:
    """What the filter options selected: a batch (ListTasks' own batch_id) and the other conditions."""

    batch_id: str = ""
    conditions: TaskFilter = field(default_factory=lambda: TaskFilter())

    @property
    def empty(self) -> bool:
        return not self.batch_id and not self.conditions

    def describe(self) -> str:
        """The conditions in words, for a confirmation prompt."""
        parts = [f"batch {self.batch_id}"] if self.batch_id else []
        for key, value in self.conditions.items():
            if key == "statuses":
                parts.append("status " + " or ".join(str(s) for s in value))  # type: ignore[attr-defined]
            elif isinstance(value, datetime):
                parts.append(f"{key.replace('_', ' ')} {value.isoformat(timespec='seconds')}")
            elif value is True:
                parts.append(key.replace("_", "-"))
            else:
                parts.append(f"{key.replace('_', ' ')} {value!r}")
        return ", ".join(parts) or "every task"


_OPTIONS = [
    click.option("--name", "name_contains", default="", help="only tasks whose name contains this (any case)"),
    click.option("--id", "id_prefix", default="", help="only tasks whose id starts with this"),
    click.option("--batch", "batch_id", default="", help="only the replicas of this batch"),
    click.option("--kind", default="", help="only tasks of this kind"),
    click.option(
        "--status",
        "statuses",
        type=click.Choice(STATUS_NAMES),
        multiple=True,
        help="only tasks in this status (repeat for several)",
    ),
    click.option(
        "--since", "created_after", type=PAST_TIME, default=None, help="submitted at or after (e.g. 2h, 09:00)"
    ),
    click.option("--until", "created_before", type=PAST_TIME, default=None, help="submitted before this time"),
    click.option("--dead-lettered", is_flag=True, help="only tasks that failed their last attempt"),
    click.option("--schedule", "schedule_id", default="", help="only tasks submitted by this schedule"),
    click.option("--concurrency-key", default="", help="only tasks with this concurrency key"),
]
_KEYS = ("name_contains", "id_prefix", "kind", "statuses", "created_after", "created_before", "schedule_id")
_MORE_KEYS = ("dead_lettered", "concurrency_key")


def filter_options(fn: F) -> F:
    """Add the filter options; the command receives them as one `selection: Selection` argument."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        batch_id = kwargs.pop("batch_id")
        conditions = TaskFilter()
        for key in (*_KEYS, *_MORE_KEYS):
            value = kwargs.pop(key)
            if value:
                conditions[key] = list(value) if key == "statuses" else value  # type: ignore[literal-required]
        return fn(*args, selection=Selection(batch_id, conditions), **kwargs)

    command: Any = wrapper
    for option in reversed(_OPTIONS):
        command = option(command)
    return command  # type: ignore[no-any-return]
