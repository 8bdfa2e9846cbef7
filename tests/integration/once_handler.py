"""A task body that records, by itself, every time it starts and then succeeds at once: a test of a lost start
reply counts its runs, so a second run would be seen, not inferred from the history."""

from __future__ import annotations

from resilienttask.handlers import TaskContext, task

KIND = "test.once"
# (task id, attempt) of every run, in the order they started.
STARTS: list[tuple[str, int]] = []


@task(KIND)
async def once(ctx: TaskContext) -> None:
    STARTS.append((ctx.task_id, ctx.attempt))
