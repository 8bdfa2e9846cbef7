"""A short task body that records its own runs (tests/integration/gated_handler.py's format), for the PostgreSQL
failover test: whether a task ran twice is read from what the bodies wrote, never from the task status."""

from __future__ import annotations

from resilienttask.handlers import TaskContext, task
from tests.integration.gated_handler import _run

RECORDED_KIND = "test.failover.recorded"


@task(RECORDED_KIND)
async def recorded(ctx: TaskContext) -> None:
    await _run(ctx)
