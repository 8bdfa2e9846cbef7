"""A task kind with a large result, served by the test stack's workers: its change events must stay small."""

from __future__ import annotations

from typing import Any

from resilienttask.handlers import TaskContext, task

KIND = "test.bulky"
# Near the largest result a worker may report (64 KiB as JSON), far above anything an event may hold.
RESULT_BYTES = 60 * 1024


@task(KIND)
async def bulky(ctx: TaskContext) -> dict[str, Any]:
    """Reports progress once, then returns the payload's `result_marker` repeated to RESULT_BYTES."""
    ctx.report_progress(0.5)
    marker = str(ctx.payload.get("result_marker") or "result")
    return {"blob": marker * (RESULT_BYTES // len(marker))}
