"""Tables and detail views for the terminal (rich); `--json` output bypasses all of this."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from datetime import UTC, datetime

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from resilienttask.cli.durations import format_duration
from resilienttask.models import Task, TaskStats, TaskStatus, Worker

STATUS_STYLE = {
    TaskStatus.QUEUED: "yellow",
    TaskStatus.RUNNING: "cyan",
    TaskStatus.CANCELLING: "magenta",
    TaskStatus.SUCCEEDED: "green",
    TaskStatus.FAILED: "bold red",
    TaskStatus.CANCELLED: "bright_black",
    TaskStatus.TIMED_OUT: "red",
}

# Piped output is not cut to 80 columns: ids and errors stay whole for grep and copy.
PIPE_WIDTH = 200


def _console(*, to_stderr: bool) -> Console:
    console = Console(stderr=to_stderr, highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = PIPE_WIDTH
    return console


stdout = _console(to_stderr=False)
stderr = _console(to_stderr=True)


def status_text(status: TaskStatus) -> Text:
    return Text(status.value, style=STATUS_STYLE.get(status, ""))


def ago(moment: datetime | None) -> str:
    """'12s ago', '3m ago', '2h ago' — enough to tell old from new at a glance."""
    if moment is None:
        return "-"
    seconds = max(0, int((datetime.now(UTC) - moment).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def progress_cell(task: Task) -> str:
    return f"{task.progress * 100:5.1f}%"


def tasks_table(tasks: Iterable[Task], *, title: str | None = None) -> Table:
    table = Table(title=title, title_justify="left", expand=False)
    table.add_column("ID", no_wrap=True)
    table.add_column("NAME", overflow="ellipsis", min_width=6, max_width=30)
    table.add_column("KIND", min_width=5)
    table.add_column("STATUS", no_wrap=True)
    table.add_column("PROGRESS", justify="right", no_wrap=True)
    table.add_column("ATTEMPT", justify="right", no_wrap=True)
    table.add_column("CREATED", no_wrap=True)
    table.add_column("ERROR", overflow="ellipsis", max_width=60)
    for task in tasks:
        table.add_row(
            task.id,
            task.name,
            task.kind,
            status_text(task.status),
            progress_cell(task),
            f"{task.attempt}/{task.max_attempts}",
            ago(task.created_at),
            task.error,
        )
    return table


def task_detail(task: Task) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    rows: list[tuple[str, str | Text]] = [
        ("id", task.id),
        ("name", task.name),
        ("kind", task.kind),
        ("status", status_text(task.status)),
        ("progress", progress_cell(task).strip()),
        ("attempt", f"{task.attempt} of {task.max_attempts}"),
        ("worker", task.worker_id or "-"),
        ("workload", format_duration(task.workload)),
        ("max runtime", format_duration(task.max_runtime)),
        ("batch", f"{task.batch_id} (replica {task.replica_index})"),
        ("request id", task.request_id),
        ("created", _when(task.created_at)),
        ("started", _when(task.started_at)),
        ("finished", _when(task.finished_at)),
        ("dead-lettered", "yes" if task.dead_lettered else "no"),
        ("version", str(task.version)),
    ]
    if task.error:
        rows.append(("error", task.error))
    if task.payload:
        rows.append(("payload", json.dumps(task.payload)))
    if task.result is not None:
        rows.append(("result", json.dumps(task.result)))
    for key, value in rows:
        table.add_row(key, value)
    return table


def _when(moment: datetime | None) -> str:
    return f"{moment.isoformat(timespec='seconds')} ({ago(moment)})" if moment else "-"


def stats_table(stats: TaskStats) -> Table:
    table = Table(show_header=True, expand=False)
    for name in ("active", "queued", "running", "succeeded", "failed", "cancelled", "timed out"):
        table.add_column(name.upper(), justify="right")
    table.add_row(
        *(
            str(v)
            for v in (
                stats.active,
                stats.queued,
                stats.running,
                stats.succeeded,
                stats.failed,
                stats.cancelled,
                stats.timed_out,
            )
        )
    )
    return table


def stats_line(stats: TaskStats) -> Text:
    return Text.assemble(
        ("active ", "bold"),
        str(stats.active),
        "  ",
        ("queued ", "yellow"),
        str(stats.queued),
        "  ",
        ("running ", "cyan"),
        str(stats.running),
        "  ",
        ("succeeded ", "green"),
        str(stats.succeeded),
        "  ",
        ("failed ", "red"),
        str(stats.failed),
        "  ",
        ("cancelled ", "bright_black"),
        str(stats.cancelled),
        "  ",
        ("timed out ", "red"),
        str(stats.timed_out),
    )


def workers_table(workers: Iterable[Worker]) -> Table:
    table = Table(expand=False)
    table.add_column("ID", no_wrap=True)
    table.add_column("BUSY", justify="right")
    table.add_column("SLOTS", justify="right")
    table.add_column("KINDS")
    table.add_column("LAST HEARTBEAT", no_wrap=True)
    table.add_column("STARTED", no_wrap=True)
    for worker in workers:
        table.add_row(
            worker.id,
            str(worker.busy),
            str(worker.slots),
            ", ".join(worker.kinds),
            ago(worker.last_heartbeat),
            ago(worker.started_at),
        )
    return table


def watch_view(tasks: Iterable[Task], stats: TaskStats, workers: Iterable[Worker], *, limit: int) -> Group:
    """The live screen of `rtask watch`: counts, then the newest tasks."""
    pool = list(workers)
    busy = sum(w.busy for w in pool)
    slots = sum(w.slots for w in pool)
    newest = sorted(tasks, key=lambda t: (t.created_at or datetime.min.replace(tzinfo=UTC), t.id), reverse=True)
    header = Text.assemble(stats_line(stats), f"   workers {len(pool)} ({busy}/{slots} slots busy)")
    return Group(header, tasks_table(newest[:limit]))
