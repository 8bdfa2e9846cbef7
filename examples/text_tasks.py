"""Example task handlers: serve them with `rtask worker --import text_tasks` (run from this folder).

Two kinds:
- `word-count` (async, runs inside the worker): counts words of payload `text`, reporting progress.
- `primes` (sync, so it runs in its own child process and can be killed): counts primes below
  payload `below`, checking `ctx.cancelled` so a cancel stops it cooperatively.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from resilienttask.handlers import TaskContext, task


@task("word-count")
async def word_count(ctx: TaskContext) -> dict[str, Any]:
    lines = str(ctx.payload.get("text", "")).splitlines() or [""]
    counts: Counter[str] = Counter()
    for index, line in enumerate(lines, start=1):
        counts.update(word.strip(".,;:!?\"'()").lower() for word in line.split())
        ctx.report_progress(index / len(lines))
        await ctx.sleep_or_cancel(0)  # a cancel stops us here
    counts.pop("", None)
    return {"words": sum(counts.values()), "distinct": len(counts), "top": counts.most_common(3)}


@task("primes")
def primes(ctx: TaskContext) -> dict[str, Any]:
    below = int(ctx.payload.get("below", 10_000))
    found = 0
    for n in range(2, below):
        if ctx.cancelled:
            raise RuntimeError(f"cancelled at {n}")
        if all(n % d for d in range(2, int(n**0.5) + 1)):
            found += 1
        if n % 1000 == 0:
            ctx.report_progress(n / below)
    ctx.report_progress(1.0)
    return {"below": below, "primes": found}
