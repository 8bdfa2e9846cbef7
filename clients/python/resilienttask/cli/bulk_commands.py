"""`rtask show` (a task with its attempts and history) and `rtask bulk cancel|retry|delete` (listed tasks, or
every task matching the filter options, page by page, after a confirmation that states the count)."""

from __future__ import annotations

import click

from resilienttask.cli.bounds import int_range
from resilienttask.cli.common import Connection, emit_json, json_option, server_command
from resilienttask.cli.filters import STATUS_NAMES, Selection, filter_options
from resilienttask.cli.history_view import attempts_table, transitions_table
from resilienttask.cli.render import stderr, stdout, task_detail
from resilienttask.client import Client
from resilienttask.search import MAX_PAGE_SIZE, BulkResult
from resilienttask.v1.scheduler_pb2 import CancelTasksRequest


@click.command()
@click.argument("task_id")
@json_option
@server_command
def show(conn: Connection, task_id: str, as_json: bool) -> None:
    """Show a task whole, with every attempt (worker, start, end, outcome, error) and its transitions."""
    with conn.client() as client:
        history = client.history(task_id)
    if as_json:
        emit_json(history.to_dict())
        return
    stdout.print(task_detail(history.task))
    stdout.print(attempts_table(history.attempts))
    stdout.print(transitions_table(history.transitions, truncated=history.truncated))


# What each verb does, for the prompt and the report: (verb, past tense, the tasks it applies to).
_ACTIONS = {
    "cancel": ("Cancel", "cancelled", "unfinished ones are cancelled, running ones stopped"),
    "retry": ("Retry", "queued again", "failed, timed-out and cancelled ones are queued again"),
    "delete": ("Delete", "deleted", "finished ones are deleted"),
}


def _run(client: Client, action: str, task_ids: tuple[str, ...], selection: Selection, page_size: int) -> BulkResult:
    ids = list(task_ids) if task_ids else None
    kwargs = {} if ids else {"batch_id": selection.batch_id, **selection.conditions}
    if not ids and selection.empty:  # --all: every status is every task (the SDK wants a condition said)
        kwargs["statuses"] = STATUS_NAMES
    if action == "cancel":
        return client.cancel_many(ids, page_size=page_size, **kwargs)  # type: ignore[arg-type]
    if action == "retry":
        return client.retry_many(ids, page_size=page_size, **kwargs)  # type: ignore[arg-type]
    return client.delete_many(ids, page_size=page_size, **kwargs)  # type: ignore[arg-type]


def _bulk_command(action: str) -> click.Command:
    verb, done, applies = _ACTIONS[action]

    @click.command(name=action, help=f"{verb} the listed tasks, or every task matching the filter ({applies}).")
    @click.argument("task_ids", nargs=-1)
    @filter_options
    @click.option("--all", "every", is_flag=True, help="with no filter: every one of your tasks")
    @click.option("--yes", "-y", is_flag=True, help="do not ask for confirmation")
    @click.option(
        "--page-size",
        type=int_range(CancelTasksRequest, "page_size"),
        default=MAX_PAGE_SIZE,
        show_default=True,
        help="tasks taken per call",
    )
    @json_option
    @server_command
    def command(
        conn: Connection,
        task_ids: tuple[str, ...],
        selection: Selection,
        every: bool,
        yes: bool,
        page_size: int,
        as_json: bool,
    ) -> None:
        if task_ids and (not selection.empty or every):
            raise click.UsageError("give task ids or filter options, not both")
        if not task_ids and selection.empty and not every:
            raise click.UsageError("give task ids, filter options, or --all for every one of your tasks")
        with conn.client() as client:
            if not yes:
                count = (
                    len(set(task_ids))
                    if task_ids
                    else client.count(batch_id=selection.batch_id, **selection.conditions)
                )
                what = "listed" if task_ids else f"matching {selection.describe()}"
                if count == 0:
                    stderr.print(f"no task {what}")
                    return
                plural = "s" if count != 1 else ""
                click.confirm(f"{verb} {count} task{plural} {what}? ({applies})", abort=True, err=True)
            result = _run(client, action, task_ids, selection, page_size)
        if as_json:
            emit_json(result.to_dict())
        else:
            stdout.print(f"{result.affected} {done}, {result.skipped} skipped")

    return command


@click.group()
def bulk() -> None:
    """Act on many tasks at once: `rtask bulk retry --status failed`, `rtask bulk cancel --name nightly`,
    `rtask bulk delete ID...`. Asks for confirmation with the count unless --yes."""


for _action in _ACTIONS:
    bulk.add_command(_bulk_command(_action))
