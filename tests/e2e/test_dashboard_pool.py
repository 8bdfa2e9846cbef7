"""The worker pool's busy slots in Chromium: taken from the same live events as the task table, so they never
lag behind the running tasks the table shows (the heartbeat's figure once said 0 of 30 while 50 ran)."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import Page, expect

from services.stack.stack import Stack
from tests.e2e.dashboard import cancel_unfinished, rows, sign_up, submit
from tests.helpers import eventually

pytestmark = pytest.mark.e2e

# Records in the page, from now on, every painted moment at which the table shows more running tasks than the pool
# shows busy slots, or the workers' own figures do not add up to the pool's.
OBSERVE_POOL = r"""() => {
  window.__lagging = [];
  const observe = () => {
    const running = document.querySelectorAll('.tbody [role=row][data-status=RUNNING]').length;
    const summary = /(\d+) of (\d+) slots busy/.exec(document.querySelector('.pool-summary').textContent);
    const busy = summary ? Number(summary[1]) : 0;
    const perWorker = [...document.querySelectorAll('.worker-busy')]
      .reduce((n, el) => n + Number(el.textContent.split('/')[0]), 0);
    if (running > busy || perWorker !== busy) window.__lagging.push({ running, busy, perWorker });
  };
  const options = { subtree: true, childList: true, characterData: true, attributes: true };
  const observer = new MutationObserver(observe);
  observer.observe(document.querySelector('.tbody'), options);
  observer.observe(document.querySelector('.pool-summary').parentElement, options);
}"""
BUSY = re.compile(r"(\d+) of (\d+) slots busy")


async def busy_shown(page: Page) -> int:
    text = await page.locator(".pool-summary").text_content() or ""
    found = BUSY.search(text)
    assert found, text
    return int(found[1])


async def test_busy_slots_follow_the_running_tasks_without_waiting_for_a_heartbeat(page: Page, stack: Stack) -> None:
    await sign_up(page)
    await expect(page.locator(".pool-summary")).to_contain_text("3 workers")
    others = await busy_shown(page)  # other users' work still running from earlier tests, if any
    await page.evaluate(OBSERVE_POOL)
    try:
        await submit(page, "pool-load", replicas=6, workload_s="300")
        await expect(rows(page, "pool-load", "RUNNING")).to_have_count(6)
        assert await busy_shown(page) >= 6, "the same paint that shows them running counts their slots"

        await cancel_unfinished(page, stack)
        await expect(rows(page, "pool-load", "CANCELLED")).to_have_count(6)

        async def freed() -> bool:
            return await busy_shown(page) <= others

        await eventually(freed, message="the cancelled tasks' slots are free again")
    finally:
        await cancel_unfinished(page, stack)
    assert await page.evaluate("() => window.__lagging") == [], "busy slots lagged behind the running tasks"
