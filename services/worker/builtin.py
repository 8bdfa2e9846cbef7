"""The built-in task kinds every worker serves: sleep, fail and spin."""

from __future__ import annotations

import time
from typing import Any

from resilienttask.handlers import TaskContext, task

# Progress is reported about a hundred times per run, but not more often than every 50 ms
# and not less often than every second.
MIN_PROGRESS_STEP_S = 0.05
MAX_PROGRESS_STEP_S = 1.0
# The simulated workload logs a line at each of these quarters (and at its start and end): enough to see
# logs without a handler of one's own, few enough to cost nothing.
LOG_QUARTERS = 4


async def _simulate(ctx: TaskContext) -> None:
    """Wait out the workload, reporting progress; a cancel interrupts the wait at once."""
    total = max(0.0, ctx.workload_s)
    step = min(max(total / 100, MIN_PROGRESS_STEP_S), MAX_PROGRESS_STEP_S)
    started = time.monotonic()
    ctx.log.info("attempt %d: working for %gs", ctx.attempt, total)
    ctx.report_progress(0.0)
    logged = 0
    while (elapsed := time.monotonic() - started) < total:
        await ctx.sleep_or_cancel(min(step, total - elapsed))
        fraction = min(1.0, (time.monotonic() - started) / total)
        ctx.report_progress(fraction)
        if (quarter := int(fraction * LOG_QUARTERS)) > logged and quarter < LOG_QUARTERS:
            logged = quarter
            ctx.log.info("%d%% done", quarter * 100 // LOG_QUARTERS)
    ctx.report_progress(1.0)
    ctx.log.info("done after %.2fs", time.monotonic() - started)


@task("sleep")
async def sleep(ctx: TaskContext) -> dict[str, Any]:
    """The simulated workload: runs for `workload`, reporting progress."""
    await _simulate(ctx)
    return {"slept_s": ctx.workload_s}


@task("fail")
async def fail(ctx: TaskContext) -> None:
    """Runs for `workload`, then fails (payload `message` sets the error): exercises retries and dead-lettering.
    With payload `succeed_on_attempt` N it succeeds from attempt N on (a flaky task that recovers)."""
    await _simulate(ctx)
    succeed_on = ctx.payload.get("succeed_on_attempt")
    if isinstance(succeed_on, int | float) and 0 < succeed_on <= ctx.attempt:
        return
    message = ctx.payload.get("message") or f"simulated failure of attempt {ctx.attempt}"
    ctx.log.error("failing on purpose: %s", message)
    raise RuntimeError(str(message))


@task("spin", process=True)
def spin(ctx: TaskContext) -> dict[str, Any]:
    """A busy loop that ignores cancellation, for `workload` (forever when 0): only a kill stops it."""
    total = ctx.workload_s
    started = time.monotonic()
    deadline = started + total if total > 0 else float("inf")
    rounds = 0
    print(f"spinning for {total:g}s" if total > 0 else "spinning until killed", flush=True)
    while (now := time.monotonic()) < deadline:
        rounds += 1
        if total > 0:
            ctx.report_progress((now - started) / total)
    return {"rounds": rounds}
