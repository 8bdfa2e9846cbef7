"""Handlers that log as fast as they can, for bench/logs.py (the bench stack's workers import this module)."""

from __future__ import annotations

import time
from typing import Any

from resilienttask.handlers import TaskContext, task

PRINT_FLOOD = "bench.flood.print"
LOGGER_FLOOD = "bench.flood.logger"
# The flood checks its clock (and the cancel flag) once per this many lines.
CHECK_EVERY = 1_000


@task(PRINT_FLOOD, process=True)
def print_flood(ctx: TaskContext) -> dict[str, Any]:
    """print() in a tight loop for payload `seconds` (or until cancelled); returns how many lines it printed."""
    deadline = time.monotonic() + float(ctx.payload.get("seconds", 10))
    printed = 0
    while not ctx.cancelled and time.monotonic() < deadline:
        for _ in range(CHECK_EVERY):
            print(f"flood line {printed}")
            printed += 1
    return {"printed": printed}


@task(LOGGER_FLOOD, process=True)
def logger_flood(ctx: TaskContext) -> dict[str, Any]:
    """ctx.log.info() in a tight loop for payload `seconds` (or until cancelled)."""
    deadline = time.monotonic() + float(ctx.payload.get("seconds", 10))
    printed = 0
    while not ctx.cancelled and time.monotonic() < deadline:
        for _ in range(CHECK_EVERY):
            ctx.log.info("flood record %d", printed)
            printed += 1
    return {"printed": printed}
