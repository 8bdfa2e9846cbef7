"""Tables and detail views for the terminal (rich); `--json` output bypasses all of this."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from datetime import UTC, datetime

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from resilienttask.cli.durations import format_duration
from resilienttask.models import Schedule, Task, TaskStats, TaskStatus, Worker

STATUS_STYLE = {
    TaskStatus.SCHEDULED: "blue",
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


def _span(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def ago(moment: datetime | None) -> str:
    """'12s ago', '3m ago', '2h ago' — enough to tell old from new at a glance."""
    if moment is None:
        return "-"
    return f"{_span(max(0, int((datetime.now(UTC) - moment).total_seconds())))} ago"


def until(moment: datetime | None) -> str:
    """'in 12s', 'in 3m' for a time ahead ('due' once it passed)."""
    if moment is None:
        return "-"
    seconds = (moment - datetime.now(UTC)).total_seconds()
    return f"in {_span(math.ceil(seconds))}" if seconds > 0 else "due"


def task_status_cell(task: Task) -> Text:
    """The status; a scheduled task says when it starts."""
    text = status_text(task.status)
    if task.status is TaskStatus.SCHEDULED and task.run_at is not None:
        text.append(f" {until(task.run_at)}", style="blue")
    return text


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
            task_status_cell(task),
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
        ("run at", _when(task.run_at, ahead=True)),
        ("started", _when(task.started_at)),
        ("finished", _when(task.finished_at)),
        ("dead-lettered", "yes" if task.dead_lettered else "no"),
        ("version", str(task.version)),
    ]
    if task.schedule_id:
        rows.append(("schedule", task.schedule_id))
    if task.error:
        rows.append(("error", task.error))
    if task.payload:
        rows.append(("payload", json.dumps(task.payload)))
    if task.result is not None:
        rows.append(("result", json.dumps(task.result)))
    for key, value in rows:
        table.add_row(key, value)
    return table


def _when(moment: datetime | None, *, ahead: bool = False) -> str:
    if moment is None:
        return "-"
    relative = until(moment) if ahead and moment > datetime.now(UTC) else ago(moment)
    return f"{moment.isoformat(timespec='seconds')} ({relative})"


def stats_table(stats: TaskStats) -> Table:
    table = Table(show_header=True, expand=False)
    for name in ("scheduled", "active", "queued", "running", "succeeded", "failed", "cancelled", "timed out"):
        table.add_column(name.upper(), justify="right")
    table.add_row(
        *(
            str(v)
            for v in (
                stats.scheduled,
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
        ("scheduled ", "blue"),
        str(stats.scheduled),
        "  ",
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
    table.add_column("STATE", no_wrap=True)
    for worker in workers:
        table.add_row(
            worker.id,
            str(worker.busy),
            str(worker.slots),
            ", ".join(worker.kinds),
            ago(worker.last_heartbeat),
            ago(worker.started_at),
            "draining" if worker.draining else "active",
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


def timing_text(schedule: Schedule) -> str:
    """'cron */5 * * * * (Europe/Paris)' or 'every 30s'."""
    if schedule.cron is not None:
        return f"cron {schedule.cron}" + (f" ({schedule.time_zone})" if schedule.time_zone else " (UTC)")
    return f"every {format_duration(schedule.interval)}" if schedule.interval is not None else "-"


def last_firing(schedule: Schedule) -> Text:
    if schedule.last_error:
        return Text(f"refused: {schedule.last_error}", style="red")
    if schedule.last_slot is None:
        return Text("never fired", style="bright_black")
    text = status_text(schedule.last_status) if schedule.last_status is not None else Text("-")
    return text.append(f" {ago(schedule.last_slot)}")


def schedules_table(schedules: Iterable[Schedule]) -> Table:
    table = Table(expand=False)
    table.add_column("ID", no_wrap=True)
    table.add_column("NAME", overflow="ellipsis", min_width=6, max_width=30)
    table.add_column("TIMING", overflow="fold", max_width=40)
    table.add_column("STATE", no_wrap=True)
    table.add_column("NEXT RUN", no_wrap=True)
    table.add_column("LAST", no_wrap=True)
    table.add_column("FIRED", justify="right")
    table.add_column("SKIPPED", justify="right")
    for schedule in schedules:
        table.add_row(
            schedule.id,
            schedule.name,
            timing_text(schedule),
            Text("paused", style="yellow") if schedule.paused else Text("active", style="green"),
            "-" if schedule.paused else until(schedule.next_run),
            last_firing(schedule),
            str(schedule.fired),
            str(schedule.skipped),
        )
    return table


def schedule_detail(schedule: Schedule) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    template = schedule.task
    rows: list[tuple[str, str | Text]] = [
        ("id", schedule.id),
        ("name", schedule.name),
        ("timing", timing_text(schedule)),
        ("state", "paused" if schedule.paused else "active"),
        ("next runs", ", ".join(_when(t, ahead=True) for t in schedule.next_runs) or "-"),
        ("last firing", last_firing(schedule)),
        ("last batch", schedule.last_batch_id or "-"),
        ("last error", schedule.last_error or "-"),
        ("fired", str(schedule.fired)),
        ("skipped", str(schedule.skipped)),
        ("task", f"{template.name} ({template.kind or 'sleep'}), {template.replicas} replica(s)"),
        ("workload", format_duration(template.workload)),
        ("max runtime", format_duration(template.max_runtime) if template.max_runtime else "server default"),
        ("max attempts", str(template.max_attempts or "server default")),
        ("overlap", schedule.overlap.value),
        ("catch-up", f"{schedule.catchup.value} (limit {schedule.catchup_limit or 10})"),
        ("jitter", format_duration(schedule.jitter)),
        ("created", _when(schedule.created_at)),
        ("updated", _when(schedule.updated_at)),
        ("version", str(schedule.version)),
    ]
    if template.payload:
        rows.append(("payload", json.dumps(template.payload)))
    for key, value in rows:
        table.add_row(key, value)
    return table
