"""Delayed tasks and schedules in the dashboard, in headless Chromium against the real stack: a task that waits
as Scheduled then runs, and a schedule created, fired, paused, resumed and deleted from the page."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from services.stack.stack import Stack
from tests.e2e.dashboard import (
    accessibility_violations,
    cancel_unfinished,
    create_schedule,
    fired,
    fired_at_least,
    open_view,
    rows,
    schedule_row,
    show_statuses,
    sign_up,
    submit,
)
from tests.helpers import eventually

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


async def test_a_delayed_task_waits_as_scheduled_then_runs(page: Page, stack: Stack) -> None:
    await sign_up(page)
    await submit(page, "later", workload_s="30", start_after_s="1.5")
    await expect(rows(page, "later", "SCHEDULED")).to_have_count(1)
    row = rows(page, "later")
    await expect(row.locator(".task-meta")).to_contain_text("starts")
    await expect(row.locator(".btn.cancel")).to_be_visible()
    await expect(page.locator(".card-value[data-metric=scheduled]")).to_have_text("1")
    await expect(page.locator(".card-value[data-metric=active]")).to_have_text("0")
    await show_statuses(page, "Scheduled")
    await expect(rows(page)).to_have_count(1)
    await show_statuses(page)
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "delayed.png"))

    await expect(rows(page, "later", "RUNNING")).to_have_count(1)
    await expect(page.locator(".card-value[data-metric=scheduled]")).to_have_text("0")
    await page.get_by_label("Name").fill("both")
    await page.get_by_label("Start after (s)").fill("5")
    await page.get_by_label("Start at").fill("2020-01-01T00:00:00")
    await page.get_by_role("button", name="Submit", exact=True).click()
    await expect(page.locator("[data-error-for=run_at]")).to_have_text("Start time cannot be combined with a delay")
    await cancel_unfinished(page, stack)


async def test_a_schedule_fires_pauses_resumes_and_is_deleted(page: Page, stack: Stack) -> None:
    await sign_up(page)
    await open_view(page, "Schedules")
    await expect(page.locator(".schedules-view .empty")).to_contain_text("No schedules yet")

    # The server judges cron expressions; its refusal shows next to the field.
    await create_schedule(page, "broken", cron="61 * * * *")
    await expect(page.locator("[data-error-for=schedule-cron]")).to_contain_text("Cron expression")
    await expect(page.get_by_label("Cron expression")).to_have_attribute("aria-invalid", "")

    await create_schedule(page, "ticker", every_s="1")
    ticker = schedule_row(page, "ticker")
    await expect(ticker).to_have_count(1)
    await expect(ticker).to_contain_text("every 1.0s")
    await expect(ticker.locator(".next-runs")).to_contain_text("(in ")
    await expect(ticker.locator("[data-count=fired]")).not_to_have_text("0")
    await expect(ticker.locator("[data-last-status]")).to_be_visible()

    await open_view(page, "Tasks")
    await expect(rows(page, "ticker").first).to_be_visible()
    await open_view(page, "Schedules")

    await ticker.get_by_role("button", name="Pause ticker").click()
    await expect(ticker).to_have_attribute("data-paused", "true")
    await expect(ticker.locator(".next-runs")).to_have_text("—")
    frozen = await fired(ticker)
    # A second schedule keeps firing (and the list keeps refreshing); the paused one must not move meanwhile.
    await create_schedule(page, "witness", every_s="1", overlap="Allow overlap")
    witness = schedule_row(page, "witness")
    await eventually(lambda: fired_at_least(witness, 2), timeout_s=30, message="the witness fired twice")
    assert await fired(ticker) == frozen, "a paused schedule does not fire"

    await ticker.get_by_role("button", name="Resume ticker").click()
    await expect(ticker).to_have_attribute("data-paused", "false")
    await eventually(lambda: fired_at_least(ticker, frozen + 1), timeout_s=30, message="the resumed schedule fired")

    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "schedules.png"), full_page=True)
    assert await accessibility_violations(page) == []

    await witness.get_by_role("button", name="Pause witness").click()
    await witness.get_by_role("button", name="Trigger now witness").click()
    await expect(page.locator(".schedules-view .notice-line")).to_contain_text("witness triggered: 1 task submitted")

    for name in ("ticker", "witness"):
        row = schedule_row(page, name)
        await row.get_by_role("button", name=f"Delete {name}").click()
        await row.get_by_role("button", name=f"Confirm delete {name}").click()
        await expect(row).to_have_count(0)
    await expect(page.locator(".schedules-view .empty")).to_be_visible()
    await cancel_unfinished(page, stack)
