"""A task body that records, by itself, when it ran: the test of a partitioned worker compares the runs."""

from __future__ import annotations

import asyncio
import time

from resilienttask.handlers import TaskContext, task

KIND = "test.interval"
TICK_S = 0.02
# (task id, attempt) -> [first, last] wall-clock second the body was seen running.
RUNS: dict[tuple[str, int], list[float]] = {}


@task(KIND)
async def interval(ctx: TaskContext) -> None:
    """Runs until cancelled (or killed), stamping the time every tick."""
    run = RUNS.setdefault((ctx.task_id, ctx.attempt), [time.time(), time.time()])
    while not ctx.cancelled:
        run[1] = time.time()
        await asyncio.sleep(TICK_S)
