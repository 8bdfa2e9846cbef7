"""`rtask schedule`: recurring schedules (create, ls, get, update, pause, resume, trigger, rm)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from resilienttask._convert import ScheduleOptions, spec_options
from resilienttask.cli.bounds import int_range
from resilienttask.cli.common import Connection, emit_json, json_option, server_command
from resilienttask.cli.options import DURATION, TASK_FLAGS, template_options
from resilienttask.cli.render import schedule_detail, schedules_table, stdout, tasks_table
from resilienttask.limits import field_limits
from resilienttask.models import CatchupPolicy, OverlapPolicy, Schedule
from resilienttask.v1.schedule_pb2 import ListSchedulesRequest, ScheduleSpec

MAX_SCHEDULES_PAGE = field_limits(ListSchedulesRequest, "page_size").max_value or 1

F = TypeVar("F", bound=Callable[..., Any])

# On the command line words are joined by hyphens (cancel-previous); the SDK's values use underscores.
OVERLAP_NAMES = [p.value.replace("_", "-") for p in OverlapPolicy]
CATCHUP_NAMES = [p.value for p in CatchupPolicy]


def spec_flags(*, keep: bool = False) -> Callable[[F], F]:
    """Timing, template and policy options; with `keep` (update) each left out keeps its current value."""
    options = [
        click.option("--cron", default=None, help='5-field cron expression, e.g. "*/5 * * * *"'),
        click.option("--tz", "time_zone", default=None, help="IANA zone of --cron, e.g. Europe/Paris (default UTC)"),
        click.option("--every", "interval", type=DURATION, default=None, help="a fixed interval instead of --cron"),
        click.option("--task-name", default=None, help="name of the tasks it submits (default: the schedule's name)"),
        template_options(keep=keep),
        click.option(
            "--overlap",
            type=click.Choice(OVERLAP_NAMES),
            default=None,
            help="while the previous firing runs: skip the slot (default), allow, or cancel-previous",
        ),
        click.option(
            "--catchup",
            type=click.Choice(CATCHUP_NAMES),
            default=None,
            help="slots missed while no scheduler ran: skip, latest (default, once) or all (up to --catchup-limit)",
        ),
        click.option(
            "--catchup-limit",
            type=int_range(ScheduleSpec, "catchup_limit"),
            default=None,
            help="with --catchup all; default 10",
        ),
        click.option("--jitter", type=DURATION, default=None, help="delay each firing by a random time up to this"),
    ]

    def apply(fn: F) -> F:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return apply


def _options(given: dict[str, Any], base: ScheduleOptions | None = None) -> ScheduleOptions:
    """The SDK's schedule options from the flags given, over `base` (the current spec, for an update)."""
    options = ScheduleOptions(**base) if base else ScheduleOptions()
    if given["cron"] is not None and given["interval"] is not None:
        raise click.UsageError("give --cron or --every, not both")
    if given["cron"] is not None:
        options.pop("interval", None)
        options["cron"] = given["cron"]
    elif given["interval"] is not None:
        options.pop("cron", None)
        options.pop("time_zone", None)
        options["interval"] = given["interval"]
    if given["time_zone"] is not None:
        if "cron" not in options:
            raise click.UsageError("--tz applies to --cron schedules only")
        options["time_zone"] = given["time_zone"]
    if "cron" not in options and "interval" not in options:
        raise click.UsageError("give --cron EXPRESSION (with --tz) or --every DURATION")
    for flag in ("task_name", *sorted(TASK_FLAGS)):
        if given[flag] is not None:
            options[flag] = given[flag]  # type: ignore[literal-required]
    if given["overlap"] is not None:
        options["overlap"] = OverlapPolicy(given["overlap"].replace("-", "_"))
    if given["catchup"] is not None:
        options["catchup"] = CatchupPolicy(given["catchup"])
    if given["catchup_limit"] is not None:
        options["catchup_limit"] = given["catchup_limit"]
    if given["jitter"] is not None:
        options["jitter"] = given["jitter"]
    return options


def _print(schedules: list[Schedule], as_json: bool, *, detail: bool = False) -> None:
    if as_json:
        emit_json(schedules[0].to_dict() if detail else [s.to_dict() for s in schedules])
    elif detail:
        stdout.print(schedule_detail(schedules[0]))
    else:
        stdout.print(schedules_table(schedules))


@click.group()
def schedule() -> None:
    """Recurring schedules: a cron expression (--cron, --tz) or a fixed interval (--every) submitting a task."""


@schedule.command()
@click.argument("name")
@spec_flags()
@click.option("--paused", is_flag=True, help="create it paused (resume it later)")
@click.option("--request-id", default=None, help="idempotency key (generated when omitted)")
@json_option
@server_command
def create(conn: Connection, name: str, paused: bool, request_id: str | None, as_json: bool, **given: Any) -> None:
    """Create a schedule NAME that fires at --cron times (in --tz) or --every interval.

    e.g. `rtask schedule create nightly --cron "0 3 * * *" --tz Europe/Paris --kind sleep --workload 1m`
    """
    options = _options(given)
    with conn.client() as client:
        created = client.create_schedule(name, paused=paused, request_id=request_id, **options)
    _print([created], as_json, detail=True)


@schedule.command(name="ls")
@json_option
@server_command
def list_schedules(conn: Connection, as_json: bool) -> None:
    """List your schedules, oldest first, with their next run and last firing."""
    with conn.client() as client:
        found = list(client.list_schedules(page_size=MAX_SCHEDULES_PAGE))
    _print(found, as_json)


@schedule.command()
@click.argument("schedule_id")
@json_option
@server_command
def get(conn: Connection, schedule_id: str, as_json: bool) -> None:
    """Show one schedule: its spec, next runs and what it fired."""
    with conn.client() as client:
        found = client.get_schedule(schedule_id)
    _print([found], as_json, detail=True)


@schedule.command()
@click.argument("schedule_id")
@click.option("--name", default=None, help="rename the schedule")
@spec_flags(keep=True)
@json_option
@server_command
def update(conn: Connection, schedule_id: str, name: str | None, as_json: bool, **given: Any) -> None:
    """Change a schedule; what is not given stays as it is. Slots count again from now."""
    with conn.client() as client:
        current = client.get_schedule(schedule_id)
        options = _options(given, spec_options(current))
        updated = client.update_schedule(schedule_id, name or current.name, **options)
    _print([updated], as_json, detail=True)


def _each(verb: str, act: Callable[[Any, str], Schedule]) -> click.Command:
    @click.command(name=verb)
    @click.argument("schedule_ids", nargs=-1, required=True)
    @json_option
    @server_command
    def command(conn: Connection, schedule_ids: tuple[str, ...], as_json: bool) -> None:
        with conn.client() as client:
            done = [act(client, schedule_id) for schedule_id in schedule_ids]
        _print(done, as_json)

    return command


pause = _each("pause", lambda client, schedule_id: client.pause_schedule(schedule_id))
pause.help = "Pause schedules: no firing until resumed, and missed slots are not caught up."
resume = _each("resume", lambda client, schedule_id: client.resume_schedule(schedule_id))
resume.help = "Resume paused schedules from their next slot."
schedule.add_command(pause)
schedule.add_command(resume)


@schedule.command()
@click.argument("schedule_id")
@click.option("--request-id", default=None, help="idempotency key: the same key again fires once")
@json_option
@server_command
def trigger(conn: Connection, schedule_id: str, request_id: str | None, as_json: bool) -> None:
    """Fire a schedule now, outside its slots (its overlap policy applies)."""
    with conn.client() as client:
        tasks = client.trigger_schedule(schedule_id, request_id=request_id)
    if as_json:
        emit_json({"skipped": not tasks, "tasks": [t.to_dict() for t in tasks]})
    elif not tasks:
        stdout.print("skipped: the previous firing is still active (overlap policy)")
    else:
        stdout.print(tasks_table(tasks, title=f"batch {tasks[0].batch_id}"))


@schedule.command()
@click.argument("schedule_ids", nargs=-1, required=True)
@json_option
@server_command
def rm(conn: Connection, schedule_ids: tuple[str, ...], as_json: bool) -> None:
    """Delete schedules; the tasks they submitted stay."""
    with conn.client() as client:
        for schedule_id in schedule_ids:
            client.delete_schedule(schedule_id)
    if as_json:
        emit_json({"deleted": list(schedule_ids)})
    else:
        stdout.print(f"deleted {len(schedule_ids)} schedule{'s' if len(schedule_ids) != 1 else ''}")
