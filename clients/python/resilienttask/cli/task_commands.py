"""Commands that act on tasks: submit, ls, get, cancel, retry, rm, clear."""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

import click

from resilienttask.cli.bounds import int_range, range_text
from resilienttask.cli.common import (
    EXIT_TASKS_FAILED,
    Connection,
    emit_json,
    json_option,
    server_command,
)
from resilienttask.cli.filters import Selection, filter_options
from resilienttask.cli.live import BatchProgress
from resilienttask.cli.options import DURATION, TIME, submit_options, template_options
from resilienttask.cli.render import stderr, stdout, task_detail, tasks_table
from resilienttask.client import Client
from resilienttask.models import Task
from resilienttask.search import MAX_PAGE_SIZE
from resilienttask.v1.scheduler_pb2 import SubmitTaskRequest


def _print_tasks(tasks: list[Task], as_json: bool, title: str | None = None) -> None:
    if as_json:
        emit_json([t.to_dict() for t in tasks])
    else:
        stdout.print(tasks_table(tasks, title=title))


@click.command()
@click.argument("name")
@template_options()
@click.option("--at", "run_at", type=TIME, default=None, help="start at this time (e.g. 18:00, 2026-12-24T18:00Z)")
@click.option("--in", "delay", type=DURATION, default=None, help="start after this delay (e.g. 10m)")
@click.option(
    "--priority",
    type=int_range(SubmitTaskRequest, "priority"),
    default=None,
    help=f"{range_text(SubmitTaskRequest, 'priority')}, the higher the more urgent; default 3",
)
@click.option(
    "--concurrency-key", default="", help="at most --concurrency-limit of your tasks with this key run at once"
)
@click.option(
    "--concurrency-limit",
    type=int_range(SubmitTaskRequest, "concurrency_limit"),
    default=None,
    help="with --concurrency-key",
)
@click.option("--request-id", default=None, help="idempotency key (generated when omitted)")
@click.option("--wait", "wait_", is_flag=True, help="wait for every task to finish, with live progress bars")
@click.option("--timeout", type=DURATION, default=None, help="with --wait: give up after this long (exit 7)")
@json_option
@server_command
def submit(conn: Connection, name: str, wait_: bool, timeout: timedelta | None, as_json: bool, **given: Any) -> None:
    """Submit a task NAME (or --replicas copies of it), now or later (--at, --in: SCHEDULED until then).
    With --wait, exit 6 unless every task succeeded."""
    if timeout is not None and not wait_:
        raise click.UsageError("--timeout only makes sense with --wait")
    if given["run_at"] is not None and given["delay"] is not None:
        raise click.UsageError("give --at or --in, not both")
    if bool(given["concurrency_key"]) != (given["concurrency_limit"] is not None):
        raise click.UsageError("give --concurrency-key and --concurrency-limit together")
    with conn.client() as client:
        tasks = client.submit(name, **submit_options(given))
        if not wait_:
            _print_tasks(tasks, as_json, title=f"batch {tasks[0].batch_id}")
            return
        _wait_and_report(client, tasks, timeout, as_json)


def _wait_and_report(client: Client, tasks: list[Task], timeout: timedelta | None, as_json: bool) -> None:
    """Wait for tasks (live bars on a terminal), print them, exit 6 unless every one succeeded."""
    try:
        if not as_json and stderr.is_terminal:
            with BatchProgress(tasks, stderr) as bars:
                final = client.wait(tasks, timeout, on_change=bars.update)
        else:
            final = client.wait(tasks, timeout)
    except KeyboardInterrupt:
        stderr.print("stopped waiting; the tasks keep running")
        raise SystemExit(130) from None
    _print_tasks(final, as_json)
    failed = [t for t in final if not t.succeeded]
    if failed:
        if not as_json:
            stderr.print(f"[red]{len(failed)} of {len(final)} tasks did not succeed[/]")
        raise SystemExit(EXIT_TASKS_FAILED)


@click.command(name="wait")
@click.argument("task_ids", nargs=-1, required=True)
@click.option("--timeout", type=DURATION, default=None, help="give up after this long (exit 7)")
@json_option
@server_command
def wait_tasks(conn: Connection, task_ids: tuple[str, ...], timeout: timedelta | None, as_json: bool) -> None:
    """Wait until tasks finish, with live progress bars; exit 6 unless every one succeeded."""
    with conn.client() as client:
        tasks = [client.get(task_id) for task_id in dict.fromkeys(task_ids)]
        _wait_and_report(client, tasks, timeout, as_json)


@click.command(name="ls")
@filter_options
@click.option("--limit", type=click.IntRange(min=0), default=50, show_default=True, help="at most this many (0: all)")
@json_option
@server_command
def list_tasks(conn: Connection, selection: Selection, limit: int, as_json: bool) -> None:
    """List your tasks, newest first, filtered on the server (every page is fetched as needed); the filter
    options are also those of `rtask bulk`."""
    with conn.client() as client:
        page_size = min(limit, MAX_PAGE_SIZE) if limit else MAX_PAGE_SIZE
        found = client.list(batch_id=selection.batch_id, page_size=page_size, **selection.conditions)
        tasks = list(itertools.islice(found, limit) if limit else found)
    _print_tasks(tasks, as_json)


@click.command()
@click.argument("task_id")
@json_option
@server_command
def get(conn: Connection, task_id: str, as_json: bool) -> None:
    """Show one task."""
    with conn.client() as client:
        task = client.get(task_id)
    if as_json:
        emit_json(task.to_dict())
    else:
        stdout.print(task_detail(task))


@click.command()
@click.argument("task_ids", nargs=-1)
@click.option("--batch", "batch_id", default=None, help="cancel every unfinished replica of this batch")
@json_option
@server_command
def cancel(conn: Connection, task_ids: tuple[str, ...], batch_id: str | None, as_json: bool) -> None:
    """Cancel tasks (queued: at once; running: the worker stops them)."""
    if bool(task_ids) == bool(batch_id):
        raise click.UsageError("give task ids or --batch BATCH_ID (not both)")
    with conn.client() as client:
        tasks = client.cancel_batch(batch_id) if batch_id else [client.cancel(t) for t in task_ids]
    _print_tasks(tasks, as_json)


@click.command()
@click.argument("task_ids", nargs=-1, required=True)
@click.option("--in", "delay", type=DURATION, default=None, help="run the retry after this delay (e.g. 5m)")
@json_option
@server_command
def retry(conn: Connection, task_ids: tuple[str, ...], delay: timedelta | None, as_json: bool) -> None:
    """Queue failed, timed-out or cancelled tasks again (with --in: SCHEDULED until then)."""
    with conn.client() as client:
        tasks = [client.retry(t, delay=delay) for t in task_ids]
    _print_tasks(tasks, as_json)


@click.command()
@click.argument("task_ids", nargs=-1, required=True)
@json_option
@server_command
def rm(conn: Connection, task_ids: tuple[str, ...], as_json: bool) -> None:
    """Delete finished tasks."""
    with conn.client() as client:
        for task_id in task_ids:
            client.delete(task_id)
    if as_json:
        emit_json({"deleted": list(task_ids)})
    else:
        stdout.print(f"deleted {len(task_ids)} task{'s' if len(task_ids) != 1 else ''}")


@click.command()
@json_option
@server_command
def clear(conn: Connection, as_json: bool) -> None:
    """Delete all of your finished tasks (running and queued ones stay)."""
    with conn.client() as client:
        deleted = client.clear_history()
    if as_json:
        emit_json({"deleted": deleted})
    else:
        stdout.print(f"deleted {deleted} finished task{'s' if deleted != 1 else ''}")
