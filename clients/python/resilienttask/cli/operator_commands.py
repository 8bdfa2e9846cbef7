"""`rtask operator`: pause and resume task kinds, set and clear their rate limits, drain workers (the operator role
needed)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import timedelta

import click
from rich.table import Table

from resilienttask.cli.bounds import duration_range_text, int_range
from resilienttask.cli.common import EXIT_ERROR, CliError, Connection, emit_json, json_option, server_command
from resilienttask.cli.durations import format_duration
from resilienttask.cli.options import DURATION
from resilienttask.cli.render import ago, stdout, workers_table
from resilienttask.client import Client
from resilienttask.errors import PermissionDenied
from resilienttask.models import KindControl
from resilienttask.v1.operator_pb2 import RateLimit


def controls_table(controls: Iterable[KindControl]) -> Table:
    table = Table(expand=False)
    table.add_column("KIND", no_wrap=True)
    table.add_column("STATE", no_wrap=True)
    table.add_column("RATE LIMIT", no_wrap=True)
    table.add_column("WAITING", justify="right")
    for control in controls:
        state = f"paused {ago(control.paused_at)}" if control.paused else "running"
        limit = control.rate_limit
        rate = f"{limit.starts} per {format_duration(limit.per)}" if limit is not None else "-"
        table.add_row(control.kind, state, rate, str(control.waiting))
    return table


@contextmanager
def _operator_client(conn: Connection) -> Iterator[Client]:
    """The client; a missing operator role is a refusal (exit 1), not a login to redo."""
    with conn.client() as client:
        try:
            yield client
        except PermissionDenied as exc:
            raise CliError(exc.message, EXIT_ERROR) from exc


def _show(control: KindControl, as_json: bool) -> None:
    if as_json:
        emit_json(control.to_dict())
    else:
        stdout.print(controls_table([control]))


@click.group()
def operator() -> None:
    """Controls of the shared pool, for users with the operator role (granted on the server:
    python -m services.gateway.operators grant EMAIL)."""


@operator.command(name="ls")
@json_option
@server_command
def list_controls(conn: Connection, as_json: bool) -> None:
    """Every kind: paused or not, its rate limit, how many of its tasks wait."""
    with _operator_client(conn) as client:
        controls = client.kind_controls()
    if as_json:
        emit_json([c.to_dict() for c in controls])
    else:
        stdout.print(controls_table(controls))


@operator.command()
@click.argument("kind")
@json_option
@server_command
def pause(conn: Connection, kind: str, as_json: bool) -> None:
    """Start no more tasks of KIND (running ones go on); once this returns, none starts."""
    with _operator_client(conn) as client:
        _show(client.pause_kind(kind), as_json)


@operator.command()
@click.argument("kind")
@json_option
@server_command
def resume(conn: Connection, kind: str, as_json: bool) -> None:
    """Let KIND's waiting tasks start again."""
    with _operator_client(conn) as client:
        _show(client.resume_kind(kind), as_json)


@operator.command()
@click.argument("kind")
@click.argument("starts", type=int_range(RateLimit, "starts"))
@click.option(
    "--per",
    type=DURATION,
    default="1s",
    show_default=True,
    help=f"the period, {duration_range_text(RateLimit, 'period')}",
)
@json_option
@server_command
def limit(conn: Connection, kind: str, starts: int, per: timedelta, as_json: bool) -> None:
    """At most STARTS starts of KIND per period across the whole pool; the others wait."""
    with _operator_client(conn) as client:
        _show(client.set_rate_limit(kind, starts, per), as_json)


@operator.command()
@click.argument("kind")
@json_option
@server_command
def unlimit(conn: Connection, kind: str, as_json: bool) -> None:
    """Remove KIND's rate limit; its waiting tasks start."""
    with _operator_client(conn) as client:
        _show(client.clear_rate_limit(kind), as_json)


@operator.command()
@click.argument("worker_id")
@click.option(
    "--grace",
    type=DURATION,
    default="30s",
    show_default=True,
    help="how long its running tasks may finish before they are handed back, 0s to 1h",
)
@json_option
@server_command
def drain(conn: Connection, worker_id: str, grace: timedelta, as_json: bool) -> None:
    """Take WORKER_ID (see `rtask workers`) out of the pool: once this returns it starts no task; its running
    tasks may finish within the grace, the rest are queued again at once without using up an attempt."""
    with _operator_client(conn) as client:
        worker = client.drain_worker(worker_id, grace)
    if as_json:
        emit_json(worker.to_dict())
    else:
        stdout.print(workers_table([worker]))
