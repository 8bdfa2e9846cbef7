"""Task bodies that record, by themselves, when they ran: the kind-control tests compare these runs with the
limits (run intervals of a concurrency key, starts per second of a rate-limited kind, starts after a pause).

Each run appends "start <task id> <attempt> <epoch s>" when its body begins and "end ..." when it returns, to the
file named in its payload (one write per line, O_APPEND: lines from several worker processes never mix).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from resilienttask.handlers import TaskContext, task

KEYS_KIND = "test.gated.keys"
RATE_KIND = "test.gated.rate"
PAUSE_KIND = "test.gated.pause"
# No control at all: only the record of its runs (tests/integration/test_redis_cluster.py).
RECORDED_KIND = "test.gated.recorded"


def _note(path: str, what: str, ctx: TaskContext) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{what} {ctx.task_id} {ctx.attempt} {time.time():.6f}\n".encode())
    finally:
        os.close(fd)


async def _run(ctx: TaskContext) -> None:
    log = str(ctx.payload["log"])
    _note(log, "start", ctx)
    await asyncio.sleep(float(ctx.payload.get("sleep_s", 0)))
    _note(log, "end", ctx)


@task(KEYS_KIND)
async def keyed(ctx: TaskContext) -> None:
    await _run(ctx)


@task(RATE_KIND)
async def rated(ctx: TaskContext) -> None:
    await _run(ctx)


@task(PAUSE_KIND)
async def pausable(ctx: TaskContext) -> None:
    await _run(ctx)


@task(RECORDED_KIND)
async def recorded(ctx: TaskContext) -> None:
    await _run(ctx)


def runs(path: Path) -> list[tuple[str, str, int, float]]:
    """(what, task id, attempt, time) of every line written so far."""
    if not path.exists():
        return []
    found = []
    for line in path.read_text().splitlines():
        what, task_id, attempt, at = line.split()
        found.append((what, task_id, int(attempt), float(at)))
    return found
