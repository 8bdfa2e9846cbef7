"""Our workers' bench task bodies, the same as the peers': a no-op INCR, a timestamp write, a sleep.

Loaded by the bench stack's workers through RTASK_WORKER_IMPORTS=bench.handlers. Each body names its
stamps with the payload's `label`.
"""

from __future__ import annotations

import asyncio
import time

from bench.stamps import AsyncStamps
from resilienttask.handlers import TaskContext, task

SYSTEM = "ours"
_stamps = AsyncStamps()


@task("bench.noop")
async def noop(ctx: TaskContext) -> None:
    await _stamps.incr(SYSTEM, str(ctx.payload["label"]))


@task("bench.stamp")
async def stamp(ctx: TaskContext) -> None:
    await _stamps.start(SYSTEM, str(ctx.payload["label"]))


@task("bench.sleep")
async def sleep(ctx: TaskContext) -> None:
    """Sleeps for the workload; a cancel interrupts the sleep, and the moment it stopped is recorded."""
    label = str(ctx.payload["label"])
    await _stamps.start(SYSTEM, label)
    try:
        await ctx.sleep_or_cancel(ctx.workload_s)
    finally:
        stopped = time.time()
        await asyncio.shield(_stamps.stop(SYSTEM, label, stopped))
