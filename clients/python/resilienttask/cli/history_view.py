"""A task's attempts and transitions as tables (`rtask show`)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from rich.table import Table
from rich.text import Text

from resilienttask.cli.durations import format_duration
from resilienttask.cli.render import status_text
from resilienttask.search import TaskAttempt, TaskTransition


def _clock(moment: datetime | None) -> str:
    return moment.astimezone().isoformat(timespec="milliseconds") if moment is not None else "-"


def attempts_table(attempts: Iterable[TaskAttempt]) -> Table:
    table = Table(title="attempts", title_justify="left", expand=False)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("WORKER", no_wrap=True)
    table.add_column("STARTED", no_wrap=True)
    table.add_column("TOOK", justify="right", no_wrap=True)
    table.add_column("OUTCOME", no_wrap=True)
    table.add_column("ERROR", overflow="fold")
    for attempt in attempts:
        took = "-"
        if attempt.started_at is not None and attempt.finished_at is not None:
            took = format_duration(attempt.finished_at - attempt.started_at)
        table.add_row(
            str(attempt.attempt),
            attempt.worker_id or "-",
            _clock(attempt.started_at),
            took,
            status_text(attempt.outcome),
            attempt.error,
        )
    return table


def transitions_table(transitions: Iterable[TaskTransition], *, truncated: bool = False) -> Table:
    title = "history (the latest 1,000 transitions)" if truncated else "history"
    table = Table(title=title, title_justify="left", expand=False)
    table.add_column("AT", no_wrap=True)
    table.add_column("FROM", no_wrap=True)
    table.add_column("TO", no_wrap=True)
    table.add_column("ATTEMPT", justify="right", no_wrap=True)
    table.add_column("WORKER", no_wrap=True)
    table.add_column("DETAIL", overflow="fold")
    for change in transitions:
        table.add_row(
            _clock(change.at),
            status_text(change.from_status) if change.from_status is not None else Text("-"),
            status_text(change.to_status),
            str(change.attempt),
            change.worker_id or "-",
            change.detail,
        )
    return table
