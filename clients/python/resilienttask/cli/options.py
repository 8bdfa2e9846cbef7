"""Option types and option sets shared by commands: durations, times, JSON payloads, the task template."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

import click

from resilienttask._convert import SubmitOptions, TaskOptions
from resilienttask.cli.bounds import int_range, range_text
from resilienttask.cli.durations import parse_duration
from resilienttask.cli.times import parse_time
from resilienttask.v1.scheduler_pb2 import SubmitTaskRequest

F = TypeVar("F", bound=Callable[..., Any])


class DurationType(click.ParamType):
    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> timedelta:
        if isinstance(value, timedelta):
            return value
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class TimeType(click.ParamType):
    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            return parse_time(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DURATION = DurationType()
TIME = TimeType()


def _payload(ctx: click.Context, param: click.Parameter, value: str | None) -> dict[str, Any] | None:
    """--payload '{"k": 1}' or --payload @file.json; must be a JSON object."""
    if value is None:
        return None
    try:
        text = Path(value[1:]).read_text() if value.startswith("@") else value
        data = json.loads(text)
    except (OSError, ValueError) as exc:
        raise click.BadParameter(f"not readable JSON: {exc}", ctx=ctx, param=param) from exc
    if not isinstance(data, dict):
        raise click.BadParameter("must be a JSON object", ctx=ctx, param=param)
    return data


# The task's fields as submit takes them, each flag named as its TaskOptions key (--max-runtime: max_runtime).
TASK_FLAGS = TaskOptions.__optional_keys__


def template_options(*, keep: bool = False) -> Callable[[F], F]:
    """The task's fields as submit takes them (TASK_FLAGS): --kind, --workload, --max-runtime, --replicas,
    --max-attempts, --payload. With `keep` (an update) every default is None, meaning "leave as it is"."""

    def default(value: object) -> object:
        return None if keep else value

    options = [
        click.option(
            "--kind",
            default=default(""),
            help="handler kind (default: the simulated workload 'sleep'); see `rtask kinds`",
        ),
        click.option(
            "--workload",
            type=DURATION,
            default=default("0s"),
            show_default=not keep,
            help="simulated work, e.g. 30s, 1m30s",
        ),
        click.option("--max-runtime", type=DURATION, default=None, help="hard ceiling after which the task is killed"),
        click.option(
            "-n",
            "--replicas",
            type=int_range(SubmitTaskRequest, "replicas"),
            default=default(1),
            show_default=not keep,
            help=f"copies, {range_text(SubmitTaskRequest, 'replicas')}",
        ),
        click.option(
            "--max-attempts",
            type=int_range(SubmitTaskRequest, "max_attempts"),
            default=None,
            help="attempts before dead-lettering",
        ),
        click.option("--payload", callback=_payload, help="handler arguments: a JSON object, or @file.json"),
    ]

    def apply(fn: F) -> F:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return apply


def submit_options(given: dict[str, Any]) -> SubmitOptions:
    """The SDK's submit options from a command's flags, which bear their names; a flag not given (None) leaves
    the SDK's default."""
    return cast(
        SubmitOptions, {key: given[key] for key in SubmitOptions.__optional_keys__ if given.get(key) is not None}
    )
