"""`rtask logs TASK [--follow]`: what a task's handler logged, with time, attempt and stream."""

from __future__ import annotations

import json

import click

from resilienttask.cli.common import Connection, json_option, server_command
from resilienttask.models import LogLine


def format_line(line: LogLine) -> str:
    """`12:00:01.234 #1 stdout  text`: local time, attempt, stream (the level for logger lines)."""
    at = line.at.astimezone().strftime("%H:%M:%S.%f")[:-3] if line.at is not None else "--:--:--.---"
    source = line.level or line.stream
    return f"{at} #{line.attempt} {source:<7} {line.text}"


@click.command()
@click.argument("task_id", metavar="TASK")
@click.option("-f", "--follow", is_flag=True, help="keep printing new lines until the task finishes")
@click.option("--after", type=click.IntRange(min=0), default=0, help="only lines after this sequence number")
@json_option
@server_command
def logs(conn: Connection, task_id: str, follow: bool, after: int, as_json: bool) -> None:
    """Print what TASK's handler logged (its logger, stdout and stderr), oldest first.
    Lines dropped by the service's bounds are reported where they were missing."""
    with conn.client() as client:
        for line in client.logs(task_id, follow=follow, after=after):
            if as_json:
                click.echo(json.dumps(line.to_dict()))
                continue
            if line.dropped_before:
                click.echo(f"… {line.dropped_before} lines dropped", err=True)
            click.echo(format_line(line))
