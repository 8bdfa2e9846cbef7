"""Live terminal views fed by the watch stream: progress bars for `submit --wait`, the table of `watch`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime

from rich.console import Console, Group
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn, TimeElapsedColumn

from resilienttask.cli.render import STATUS_STYLE, watch_view
from resilienttask.models import Snapshot, Task, TaskStats, TaskUpdate, WatchEvent, Worker, WorkersUpdate

# Above this many tasks only the overall bar is drawn; one bar per replica would not fit a terminal.
MAX_TASK_BARS = 20
# The watch board forgets all but this many of the newest tasks, so a long watch of a busy account stays small.
BOARD_MEMORY = 1000


def _created(task: Task) -> datetime:
    return task.created_at or datetime.min.replace(tzinfo=UTC)


def _completed(task: Task) -> float:
    return 1.0 if task.done else task.progress


class BatchProgress:
    """One bar for the whole submission and, for small batches, one per task; updated from wait()."""

    def __init__(self, tasks: Iterable[Task], console: Console) -> None:
        self.latest = {t.id: t for t in tasks}
        self.progress = Progress(
            TextColumn("{task.description}", style="bold"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=console,
        )
        total = len(self.latest)
        self.overall = self.progress.add_task(f"{total} task{'s' if total != 1 else ''}", total=total, status="")
        self.bars: dict[str, TaskID] = {}
        if total <= MAX_TASK_BARS:
            for task in self.latest.values():
                label = f"  {task.name} #{task.replica_index}" if total > 1 else f"  {task.name}"
                self.bars[task.id] = self.progress.add_task(label, total=1.0, status="")
        for task in self.latest.values():
            self.update(task)

    def update(self, task: Task) -> None:
        self.latest[task.id] = task
        bar = self.bars.get(task.id)
        if bar is not None:
            style = STATUS_STYLE.get(task.status, "")
            self.progress.update(bar, completed=_completed(task), status=f"[{style}]{task.status.value}[/]")
        counts = Counter(t.status for t in self.latest.values())
        summary = ", ".join(f"[{STATUS_STYLE.get(s, '')}]{n} {s.value}[/]" for s, n in sorted(counts.items()))
        self.progress.update(self.overall, completed=sum(_completed(t) for t in self.latest.values()), status=summary)

    def __enter__(self) -> BatchProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


class WatchBoard:
    """What `rtask watch` shows: the newest tasks, the counts and the worker pool, kept current by events."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.tasks: dict[str, Task] = {}
        self.stats = TaskStats()
        self.workers: tuple[Worker, ...] = ()

    def apply(self, event: WatchEvent) -> None:
        if isinstance(event, Snapshot):
            self.tasks = {t.id: t for t in event.tasks}
            self.stats = event.stats
            self.workers = event.workers
        elif isinstance(event, TaskUpdate):
            self.stats = event.stats
            if event.deleted:
                self.tasks.pop(event.task.id, None)
            else:
                self.tasks[event.task.id] = event.task
                if len(self.tasks) > BOARD_MEMORY:
                    self._forget_oldest()
        elif isinstance(event, WorkersUpdate):
            self.workers = event.workers

    def _forget_oldest(self) -> None:
        newest = sorted(self.tasks.values(), key=_created, reverse=True)[: max(self.limit, BOARD_MEMORY // 2)]
        self.tasks = {t.id: t for t in newest}

    def view(self) -> Group:
        return watch_view(self.tasks.values(), self.stats, self.workers, limit=self.limit)
