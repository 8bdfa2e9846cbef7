"""Task bodies that record, by themselves, when they ran, for the partition tests (test_partitions.py).

Each run keeps one file of its own, "<task id>.<attempt>.<pid>" in the folder named in its payload (`dir`),
holding "<first tick> <last tick>" (epoch seconds), rewritten at every tick: a run stopped by a kill leaves its
last tick behind, so its end is known to within one tick whatever stopped it. The runs are compared across
worker processes, never inferred from the task's status.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path

from resilienttask.handlers import TaskContext, task

# Stops when cancelled (in the worker's process).
KIND = "test.partition"
# Ignores cancellation, in a child process: only the kill after the cancel grace stops it.
STUBBORN_KIND = "test.partition.stubborn"
TICK_S = 0.02
_WIDTH = 18  # characters per time stamp: fixed, so every rewrite covers the previous one


class _Record:
    """One run's file, rewritten in place at each tick (one pwrite of a few bytes)."""

    def __init__(self, ctx: TaskContext) -> None:
        folder = Path(str(ctx.payload["dir"]))
        path = folder / f"{ctx.task_id}.{ctx.attempt}.{os.getpid()}"
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o666)
        self.first = time.time()
        self.tick()

    def tick(self) -> None:
        line = f"{self.first:{_WIDTH}.6f} {time.time():{_WIDTH}.6f}\n".encode()
        os.pwrite(self.fd, line, 0)

    def close(self) -> None:
        self.tick()
        os.close(self.fd)


@task(KIND)
async def cooperative(ctx: TaskContext) -> None:
    """Runs for `workload` unless cancelled, ticking."""
    record = _Record(ctx)
    deadline = time.monotonic() + ctx.workload_s
    try:
        while time.monotonic() < deadline and not ctx.cancelled:
            record.tick()
            await asyncio.sleep(TICK_S)
    finally:
        record.close()


@task(STUBBORN_KIND, process=True)
def stubborn(ctx: TaskContext) -> None:
    """Runs for `workload` whatever happens, ticking: a cancel does not stop it, only a kill."""
    record = _Record(ctx)
    deadline = time.monotonic() + ctx.workload_s
    while time.monotonic() < deadline:
        record.tick()
        time.sleep(TICK_S)
    record.close()


@dataclass(frozen=True)
class Run:
    """One run of a task body, as it recorded itself; `end` is its last tick plus one tick (an upper bound)."""

    task_id: str
    attempt: int
    pid: int
    start: float
    end: float


def runs(folder: Path) -> list[Run]:
    found = []
    for path in folder.iterdir():
        task_id, attempt, pid = path.name.split(".")
        fields = path.read_text().split()
        if len(fields) != 2:  # created, not yet written
            continue
        found.append(Run(task_id, int(attempt), int(pid), float(fields[0]), float(fields[1]) + TICK_S))
    return found


def overlap_s(found: list[Run]) -> float:
    """The longest time two runs of the same task ran at once (0 when none ever did)."""
    worst = 0.0
    by_task: dict[str, list[Run]] = {}
    for run in found:
        by_task.setdefault(run.task_id, []).append(run)
    for task_runs in by_task.values():
        ordered = sorted(task_runs, key=lambda r: r.start)
        for i, earlier in enumerate(ordered):
            for later in ordered[i + 1 :]:
                worst = max(worst, min(earlier.end, later.end) - later.start)
    return worst
