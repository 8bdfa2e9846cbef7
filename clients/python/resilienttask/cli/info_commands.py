"""Read-only views: stats, workers, kinds, health, and the live `watch`."""

from __future__ import annotations

import json

import click
from rich.live import Live

from resilienttask.cli.common import EXIT_UNAVAILABLE, Connection, emit_json, json_option, server_command
from resilienttask.cli.live import WatchBoard
from resilienttask.cli.render import stats_table, stdout, workers_table


@click.command()
@json_option
@server_command
def stats(conn: Connection, as_json: bool) -> None:
    """Count your tasks per status."""
    with conn.client() as client:
        counts = client.stats()
    if as_json:
        emit_json(counts.to_dict())
    else:
        stdout.print(stats_table(counts))


@click.command()
@json_option
@server_command
def workers(conn: Connection, as_json: bool) -> None:
    """Show the worker pool: slots, busy slots, kinds, last heartbeat."""
    with conn.client() as client:
        pool = client.workers()
    if as_json:
        emit_json([w.to_dict() for w in pool])
    else:
        stdout.print(workers_table(pool))


@click.command()
@json_option
@server_command
def kinds(conn: Connection, as_json: bool) -> None:
    """Name the task kinds the live workers serve."""
    with conn.client() as client:
        names = client.kinds()
    if as_json:
        emit_json(names)
    else:
        stdout.print("\n".join(names))


@click.command()
@json_option
@server_command
def health(conn: Connection, as_json: bool) -> None:
    """Ask the edge whether it serves (no login needed); exit 5 unless SERVING."""
    with conn.client(login=False) as client:
        status = client.health()
    if as_json:
        emit_json({"server": conn.server, "status": status})
    else:
        stdout.print(f"{conn.server}: {status}")
    if status != "SERVING":
        raise SystemExit(EXIT_UNAVAILABLE)


@click.command()
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="rows in the live table")
@click.option("--resume-token", default="", help="continue after this token instead of starting with a snapshot")
@click.option("--json", "as_json", is_flag=True, help="print every event as one JSON line instead of a table")
@server_command
def watch(conn: Connection, limit: int, resume_token: str, as_json: bool) -> None:
    """Follow your tasks live until Ctrl-C; reconnects by itself without missing an event."""
    with conn.client() as client, client.watch(resume_token) as events:
        try:
            if as_json:
                for event in events:
                    click.echo(json.dumps(event.to_dict()))
                return
            board = WatchBoard(limit)
            with Live(board.view(), console=stdout, refresh_per_second=4) as live:
                for event in events:
                    board.apply(event)
                    live.update(board.view())
        except KeyboardInterrupt:
            return
