"""Ten thousand tasks of one user in the dashboard, in Chromium on the real stack: the table loads them page by
page as it is scrolled, stays virtual (a few dozen rows in the page whatever the count), and applies 10,000 state
changes as they stream in. The figures (first rows, all loaded, render, frame times while changing) are recorded
in the test's folder and printed by `make bench-dashboard` (bench/dashboard_scale.py); no time is asserted."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from bench.dashboard_scale import measure, seed
from resilienttask.v1 import scheduler_pb2
from services.stack.stack import Stack
from tests.e2e.dashboard import rows, scheduler_as, session_token, sign_up

pytestmark = pytest.mark.e2e

TASKS = 10_000


async def test_ten_thousand_tasks_load_render_and_change_without_rendering_every_row(
    page: Page, stack: Stack, tmp_path: Path
) -> None:
    await sign_up(page)
    async with scheduler_as(stack, await session_token(page)) as (stub, metadata):
        batches = await seed(stub, metadata, TASKS)
        figures = await measure(page, stub, metadata, batches, rate_per_s=None)
        (tmp_path / "figures.json").write_text(json.dumps(asdict(figures), indent=2))
        print(f"dashboard with {TASKS} tasks: {asdict(figures)}")

        # Every task was loaded (20 pages of 500 at most, never one per row) and every change reached the page.
        assert figures.tasks == TASKS
        assert 1 <= figures.list_calls <= TASKS // 500 + 1
        await expect(page.locator(".shown-count")).to_have_text(f"{TASKS} shown")
        await expect(rows(page, status="CANCELLED").first).to_be_visible()
        assert await rows(page, status="SCHEDULED").count() == 0
        # The table stayed virtual throughout: only the rows in view (and a few either side) were ever in the page.
        assert figures.rows_in_dom_max < 80, figures.rows_in_dom_max
        assert figures.frames > 0

        # The last row is reachable, and the filter narrows the 10,000 on the server and in the page alike.
        await page.locator(".viewport").evaluate("(el) => { el.scrollTop = el.scrollHeight; }")
        await expect(page.locator(f'.tbody [role=row][aria-rowindex="{TASKS + 1}"]')).to_have_count(1)
        await page.get_by_label("Search").fill("scale-007")
        await expect(page.locator(".shown-count")).to_have_text("50 shown")
        await stub.ClearHistory(scheduler_pb2.ClearHistoryRequest(), metadata=metadata, timeout=120)
        await expect(page.locator(".shown-count")).to_have_text("0 shown", timeout=60_000)
