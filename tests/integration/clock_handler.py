"""A task body that records, by itself, when it started: tests of delayed tasks compare it with run_at.

The session stack's workers import it (tests/conftest.py), so a test submits it like any other kind.
"""

from __future__ import annotations

import time

from resilienttask.handlers import TaskContext, task

KIND = "test.clock"


@task(KIND)
async def clock(ctx: TaskContext) -> dict[str, float]:
    """Returns the wall-clock second its body began (the worker's clock: the stack shares one machine)."""
    return {"started_s": time.time()}
