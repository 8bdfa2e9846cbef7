"""The dashboard's live charts in headless Chromium against the real stack: what the finished-per-second chart
plots (read back from the bars' drawn heights) matches what GetStats says finished over the same interval."""

from __future__ import annotations

import time
import uuid
from collections import Counter

import pytest
from google.protobuf.duration_pb2 import Duration
from playwright.async_api import Page, expect

from resilienttask.v1 import scheduler_pb2
from services.stack.stack import Stack
from tests.e2e.dashboard import Metadata, Stub, cancel_unfinished, scheduler_as, session_token, sign_up

pytestmark = pytest.mark.e2e

OUTCOMES = {"succeeded": "succeeded", "failed": "failed", "cancelled": "cancelled", "timedOut": "timed_out"}
# Every bar as the page drew it: its second, outcome, height in the drawing's units, and the scale it was drawn
# at; the value is recovered from the geometry, so bars of the wrong height fail the test.
PLOTTED = """() => {
  const svg = document.querySelector('svg[data-chart=throughput]');
  const yMax = Number(svg.dataset.yMax), plotHeight = Number(svg.dataset.plotHeight);
  return [...svg.querySelectorAll('rect.bar')].map((bar) => ({
    t: Number(bar.dataset.t),
    outcome: bar.dataset.outcome,
    value: Number(bar.dataset.value),
    drawn: Number(bar.getAttribute('height')) / plotHeight * yMax,
  }));
}"""


async def stats(stub: Stub, metadata: Metadata) -> Counter[str]:
    reply = await stub.GetStats(scheduler_pb2.GetStatsRequest(), metadata=metadata, timeout=10)
    return Counter({outcome: getattr(reply.stats, field) for outcome, field in OUTCOMES.items()})


async def submit(stub: Stub, metadata: Metadata, kind: str, workload_s: float, replicas: int) -> None:
    request = scheduler_pb2.SubmitTaskRequest(
        name=f"chart-{kind}",
        kind=kind,
        workload=Duration(nanos=int(workload_s * 1e9) % 10**9, seconds=int(workload_s)),
        replicas=replicas,
        max_attempts=1,
        request_id=str(uuid.uuid4()),
    )
    await stub.SubmitTask(request, metadata=metadata, timeout=10)


async def plotted_between(page: Page, start_ms: float, end_ms: float) -> Counter[str]:
    """Finishes the chart shows in the seconds from the one holding start_ms to the one holding end_ms."""
    totals: Counter[str] = Counter()
    for bar in await page.evaluate(PLOTTED):
        assert abs(bar["drawn"] - bar["value"]) < 0.01, bar
        if start_ms // 1000 * 1000 <= bar["t"] <= end_ms:
            totals[bar["outcome"]] += round(bar["drawn"])
    return totals


def close(plotted: Counter[str], counted: Counter[str]) -> bool:
    return all(abs(plotted[o] - counted[o]) <= 1 for o in OUTCOMES)


async def test_the_throughput_chart_plots_what_get_stats_counts(page: Page, stack: Stack) -> None:
    await sign_up(page)
    try:
        async with scheduler_as(stack, await session_token(page)) as (stub, metadata):
            # Interval one: quick tasks succeed and fail; interval two: slower ones finish after its start.
            start_ms, before = time.time() * 1000, await stats(stub, metadata)
            await submit(stub, metadata, "sleep", 0.3, replicas=6)
            await submit(stub, metadata, "fail", 0.3, replicas=3)
            await expect(page.locator(".card-value[data-metric=succeeded]")).to_have_text("6")
            await expect(page.locator(".card-value[data-metric=failed]")).to_have_text("3")
            middle_ms, middle = time.time() * 1000, await stats(stub, metadata)
            await submit(stub, metadata, "sleep", 2.5, replicas=4)
            await submit(stub, metadata, "sleep", 4, replicas=3)
            await expect(page.locator(".card-value[data-metric=succeeded]")).to_have_text("13", timeout=30_000)
            end_ms, after = time.time() * 1000, await stats(stub, metadata)

            first, second = middle - before, after - middle
            assert first == Counter(succeeded=6, failed=3) and second == Counter(succeeded=7)
            # The chart repaints on every change; wait for the frame that drew the last finish.
            await page.wait_for_function(
                f"() => [...document.querySelectorAll('svg[data-chart=throughput] rect.bar')]"
                f".reduce((n, bar) => n + Number(bar.dataset.value), 0) >= {sum(first.values()) + sum(second.values())}"
            )
            plotted_first = await plotted_between(page, start_ms, middle_ms)
            plotted_second = await plotted_between(page, middle_ms + 1000, end_ms)
            assert close(plotted_first, first), (plotted_first, first)
            assert close(plotted_second, second), (plotted_second, second)
            # The slower tasks finished over more than one second, and the chart shows them apart.
            seconds = {bar["t"] for bar in await page.evaluate(PLOTTED) if bar["t"] > middle_ms}
            assert len(seconds) >= 2, seconds
            # Nothing is queued now, and the queue line says so.
            await expect(page.locator("svg[data-chart=queue] polyline[data-series=queued]")).to_have_attribute(
                "data-last", "0"
            )
    finally:
        await cancel_unfinished(page, stack)
