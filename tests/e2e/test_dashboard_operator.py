"""The operator's dashboard in Chromium on the real stack: a task's own page (attempts, history, live logs,
actions), search and filters kept in the address, bulk actions over a selection or a whole filter, the
layout at four widths, and keyboard and axe-core checks of the main views."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, expect

from resilienttask.v1 import scheduler_pb2
from services.stack.stack import Stack
from tests.e2e.dashboard import (
    NetworkLog,
    cancel_unfinished,
    expect_live,
    rows,
    scheduler_as,
    serious_violations,
    session_token,
    sign_up,
    submit,
)

pytestmark = pytest.mark.e2e

TASK_URL = re.compile(r"#/tasks/[0-9a-f-]{36}$")
QUEUED, FAIL = 1, 5  # TaskStatus values


async def submit_via_api(
    stub: Any,
    metadata: Any,
    name: str,
    *,
    kind: str = "sleep",
    replicas: int = 1,
    workload_s: float = 0,
    max_attempts: int = 1,
) -> list[scheduler_pb2.Task]:  # type: ignore[name-defined]
    request = scheduler_pb2.SubmitTaskRequest(name=name, kind=kind, replicas=replicas, max_attempts=max_attempts)
    request.workload.FromMilliseconds(int(workload_s * 1000))
    return list((await stub.SubmitTask(request, metadata=metadata, timeout=30)).tasks)


async def test_a_task_page_has_its_address_attempts_history_and_live_logs(page: Page, stack: Stack) -> None:
    log = NetworkLog().attach(page)
    await sign_up(page)
    try:
        await submit(page, "with-logs", workload_s="8")
        await expect(rows(page, "with-logs")).to_have_attribute("data-status", "RUNNING")
        await page.get_by_role("button", name="with-logs #1 details").click()
        sheet = page.get_by_role("dialog", name="with-logs #1")
        await expect(sheet).to_be_visible()
        assert TASK_URL.search(page.url), page.url

        # The handler's lines arrive while it runs: the first one is there before the later ones are logged.
        lines = sheet.get_by_role("log", name="Handler log")
        await expect(lines).to_contain_text("working for 8s")
        assert "75% done" not in await lines.inner_text(), "opened early, so later lines are yet to come"
        await expect(sheet.locator(".log-state")).to_have_text("Live")
        await expect(lines).to_contain_text("75% done", timeout=30_000)
        await expect(lines).to_contain_text("done after", timeout=30_000)
        await expect(sheet.locator(".log-state")).to_have_text("The task finished; this is its whole log.")
        follows = log.named("WatchTaskLogs")
        assert len(follows) == 1, "one stream followed the log from start to finish"

        # The record: one attempt that succeeded, the transitions with their times, the result.
        await expect(sheet.locator("table.attempts tbody tr")).to_have_count(1)
        await expect(sheet.locator("table.attempts tbody tr").first).to_contain_text("Succeeded")
        await expect(sheet.locator("table.transitions tr[data-to=RUNNING]")).to_have_count(1)
        await expect(sheet.locator("table.transitions tr[data-to=SUCCEEDED]")).to_have_count(1)
        await expect(sheet.locator("[data-field=result]")).to_contain_text('"slept_s": 8')

        # The address opens it again after a reload; Escape closes it and the address forgets it.
        await page.reload()
        await expect_live(page)
        sheet = page.get_by_role("dialog", name="with-logs #1")
        await expect(sheet).to_be_visible()
        await expect(sheet.get_by_role("log", name="Handler log")).to_contain_text("done after")
        await page.keyboard.press("Escape")
        await expect(sheet).to_be_hidden()
        assert "#/tasks/" not in page.url

        # A task that failed twice: both attempts with their errors; retry and delete from its page.
        await submit(page, "twice-failed", kind="fail", workload_s="0", max_attempts=2)
        await expect(rows(page, "twice-failed", "FAILED")).to_have_count(1, timeout=30_000)
        await page.get_by_role("button", name="twice-failed #1 details").click()
        failed = page.get_by_role("dialog", name="twice-failed #1")
        attempts = failed.locator("table.attempts tbody tr")
        await expect(attempts).to_have_count(2)
        await expect(attempts.nth(0)).to_contain_text("simulated failure of attempt 1")
        await expect(attempts.nth(1)).to_contain_text("simulated failure of attempt 2")
        await expect(failed.get_by_role("log", name="Handler log")).to_contain_text("failing on purpose")
        await expect(failed.get_by_role("button", name="Cancel this task")).to_be_disabled()
        await failed.get_by_role("button", name="Retry this task").click()
        await expect(attempts).to_have_count(3, timeout=30_000)
        await expect(failed.locator(".badge").first).to_have_text("Failed", timeout=30_000)
        await failed.get_by_role("button", name="Delete this task").click()
        await expect(failed).to_be_hidden()
        await expect(rows(page, "twice-failed")).to_have_count(0)
    finally:
        await cancel_unfinished(page, stack)


async def test_search_and_filters_live_in_the_address_and_follow_live_changes(page: Page, stack: Stack) -> None:
    log = NetworkLog().attach(page)
    email = await sign_up(page)
    async with scheduler_as(stack, await session_token(page)) as (stub, metadata):
        alpha = await submit_via_api(stub, metadata, "alpha-report", replicas=3)
        beta = await submit_via_api(stub, metadata, "beta-import", kind="fail")
        gamma = await submit_via_api(stub, metadata, "gamma-long", workload_s=120)
        try:
            await expect(rows(page, "alpha-report", "SUCCEEDED")).to_have_count(3)
            await expect(rows(page, "beta-import", "FAILED")).to_have_count(1)
            await expect(rows(page, "gamma-long", "RUNNING")).to_have_count(1)

            # A name fragment, in any case; the server is asked with the filter and the address keeps it.
            await page.get_by_label("Search").fill("ALPHA")
            await expect(rows(page)).to_have_count(3)
            await expect(page).to_have_url(re.compile(r"\?q=ALPHA$"))
            assert log.named("ListTasks"), "the filter went to the server"

            # Several statuses, a kind, dead-lettered only.
            await page.get_by_label("Search").fill("")
            await page.locator("#status-filter").click()
            await page.get_by_role("checkbox", name="Running", exact=True).check()
            await page.get_by_role("checkbox", name="Failed", exact=True).check()
            await page.keyboard.press("Escape")
            await expect(rows(page)).to_have_count(2)
            await page.locator("#kind-filter").select_option("fail")
            await page.get_by_label("Dead-lettered only").check()
            await expect(rows(page)).to_have_count(1)
            await expect(rows(page, "beta-import")).to_have_count(1)
            await expect(page).to_have_url(re.compile(r"\?kind=fail&status=running%2Cfailed&dead=1$"))

            # A reload restores the view and the controls.
            await page.reload()
            await expect_live(page)
            await expect(rows(page)).to_have_count(1)
            await expect(rows(page, "beta-import")).to_have_count(1)
            await expect(page.locator("#kind-filter")).to_have_value("fail")
            await expect(page.get_by_label("Dead-lettered only")).to_be_checked()
            await expect(page.locator("#status-filter")).to_have_text("Running, Failed")

            # The same address in another tab (a shared link): after logging in, the same view.
            shared = await page.context.new_page()
            await shared.goto(page.url)
            await shared.get_by_label("Email").fill(email)
            await shared.get_by_label("Password").fill("correct horse battery")
            await shared.get_by_role("button", name="Log in").click()
            await expect_live(shared)
            await expect(rows(shared)).to_have_count(1)
            await expect(rows(shared, "beta-import")).to_have_count(1)
            await shared.close()

            # A pasted batch id shows the batch; a task id that task; the start of an id what starts with it.
            await page.get_by_role("button", name="Clear filters").click()
            await expect(page).to_have_url(re.compile(r"/$"))
            await page.get_by_label("Search").fill(alpha[0].batch_id)
            await expect(rows(page)).to_have_count(3)
            await expect(rows(page, "alpha-report")).to_have_count(3)
            await page.get_by_label("Search").fill(alpha[1].id)
            await expect(rows(page)).to_have_count(1)
            await expect(rows(page).first).to_have_attribute("data-key", alpha[1].id)
            await page.get_by_label("Search").fill(beta[0].id[:13])
            await expect(rows(page, "beta-import")).to_have_count(1)

            # A time range that holds none of them.
            await page.get_by_label("Search").fill("")
            await page.get_by_label("Created before").fill("2020-01-01T00:00")
            await expect(rows(page)).to_have_count(0)
            await expect(page.locator(".empty")).to_have_text("No tasks match this filter.")
            await page.get_by_label("Created before").fill("")

            # Live: a running task that stops matching (it was cancelled) leaves the view.
            await page.locator("#status-filter").click()
            await page.get_by_role("checkbox", name="Running", exact=True).check()
            await page.keyboard.press("Escape")
            await expect(rows(page)).to_have_count(1)
            await expect(rows(page, "gamma-long")).to_have_count(1)
            await stub.CancelTask(scheduler_pb2.CancelTaskRequest(task_id=gamma[0].id), metadata=metadata)
            await expect(rows(page)).to_have_count(0)
            await expect(page.locator(".shown-count")).to_have_text("0 shown")
        finally:
            await cancel_unfinished(page, stack)


async def test_bulk_retry_of_a_hundred_failed_tasks_and_bulk_cancel_and_delete(page: Page, stack: Stack) -> None:
    log = NetworkLog().attach(page)
    await sign_up(page)
    async with scheduler_as(stack, await session_token(page)) as (stub, metadata):
        failed = [
            task
            for i in range(2)
            for task in await submit_via_api(stub, metadata, f"to-retry-{i}", kind="fail", replicas=50)
        ]
        await expect(page.locator(".card-value[data-metric=failed]")).to_have_text("100", timeout=90_000)

        # Every failed task (the filter from the address), all of them selected, one confirmation stating the count.
        await page.goto("/?status=failed")
        await expect_live(page)
        await expect(page.locator(".shown-count")).to_have_text("100 shown")
        await page.get_by_role("checkbox", name="Select to-retry-1 #1", exact=True).check()
        bar = page.get_by_role("region", name="Selected tasks")
        await expect(bar).to_contain_text("1 task selected")
        await bar.get_by_role("button", name="Select all tasks matching the filter").click()
        await expect(bar).to_contain_text("All 100 tasks matching the filter selected")
        await bar.get_by_role("button", name="Retry selected").click()
        dialog = page.get_by_role("dialog", name="Retry 100 tasks?")
        await expect(dialog).to_be_visible()
        assert log.named("CountTasks"), "the count came from the server"
        await dialog.get_by_role("button", name="Retry 100 tasks").click()
        await expect(dialog.locator(".bulk-progress")).to_have_text("Queued again: 100 tasks.")
        await expect(dialog.locator("progress")).to_have_attribute("value", "100")
        await dialog.get_by_role("button", name="Close").click()
        await expect(page.locator(".notice-line")).to_have_text("Queued again: 100 tasks.")
        assert log.named("RetryTasks")

        # Each of them went from FAILED back to QUEUED once (a user's retry counts attempts from 1 again).
        for task in failed:
            history = await stub.GetTaskHistory(
                scheduler_pb2.GetTaskHistoryRequest(task_id=task.id), metadata=metadata, timeout=10
            )
            requeued = [t for t in history.transitions if t.from_status == FAIL and t.to_status == QUEUED]
            assert len(requeued) == 1, (task.id, history.transitions)

        # Rows picked by hand (Shift+click for a range): cancel three running tasks, then delete them.
        await page.get_by_role("button", name="Clear filters").click()
        await submit_via_api(stub, metadata, "hand-picked", replicas=3, workload_s=120)
        try:
            await expect(rows(page, "hand-picked")).to_have_count(3)
            await page.get_by_label("Search").fill("hand-picked")
            await expect(rows(page)).to_have_count(3)
            await page.get_by_role("checkbox", name="Select hand-picked #1").check()
            await page.get_by_role("checkbox", name="Select hand-picked #3").click(modifiers=["Shift"])
            await expect(bar).to_contain_text("3 tasks selected")
            await bar.get_by_role("button", name="Cancel selected").click()
            cancel = page.get_by_role("dialog", name="Cancel 3 tasks?")
            await cancel.get_by_role("button", name="Cancel 3 tasks").click()
            await expect(cancel.locator(".bulk-progress")).to_have_text("Cancelled: 3 tasks.")
            await cancel.get_by_role("button", name="Close").click()
            await expect(rows(page, "hand-picked", "CANCELLED")).to_have_count(3, timeout=30_000)
            await page.get_by_role("checkbox", name="Select every task shown").check()
            await bar.get_by_role("button", name="Delete selected").click()
            delete = page.get_by_role("dialog", name="Delete 3 tasks?")
            await delete.get_by_role("button", name="Delete 3 tasks").click()
            await expect(delete.locator(".bulk-progress")).to_have_text("Deleted: 3 tasks.")
            await delete.get_by_role("button", name="Close").click()
            await expect(rows(page)).to_have_count(0)
            assert {c.method for c in log.calls} >= {"CancelTasks", "DeleteTasks"}
        finally:
            await cancel_unfinished(page, stack)


# What the page is asked about its layout (every action button against its cell, the frame and the window).
CHECK_LAYOUT = "\n".join(
    line for line in (Path(__file__).parent / "check_layout.js").read_text().splitlines() if not line.startswith("//")
)


async def test_nothing_clipped_or_overlapping_at_four_widths(page: Page, stack: Stack, tmp_path: Path) -> None:
    await sign_up(page)
    async with scheduler_as(stack, await session_token(page)) as (stub, metadata):
        try:
            # Rows offering each pair of buttons: Cancel + Cancel batch, Retry + Delete, Delete alone.
            long_name = "a-rather-long-task-name-for-a-batch-of-two"
            await submit_via_api(stub, metadata, long_name, replicas=2, workload_s=120)
            await submit_via_api(stub, metadata, "failed-one", kind="fail")
            await submit_via_api(stub, metadata, "done-one")
            await expect(rows(page, long_name, "RUNNING")).to_have_count(2)
            await expect(rows(page, "failed-one", "FAILED")).to_have_count(1)
            await expect(rows(page, "done-one", "SUCCEEDED")).to_have_count(1)
            await page.get_by_role("checkbox", name="Select done-one #1").check()
            await expect(page.get_by_role("region", name="Selected tasks")).to_be_visible()
            for width, height in ((1024, 800), (1400, 900), (1920, 1080), (390, 844)):
                await page.set_viewport_size({"width": width, "height": height})
                await page.evaluate("() => new Promise((done) => requestAnimationFrame(() => setTimeout(done)))")
                await page.screenshot(path=str(tmp_path / f"dashboard-{width}.png"), full_page=True)
                found = await page.evaluate(CHECK_LAYOUT)
                assert found["problems"] == [], (width, found["problems"])
                # Every button was measured: Cancel and Cancel batch twice, Retry, and Delete twice.
                assert len(found["checked"]) == 7, (width, found["checked"])
            # The phone layout stacks each row on two lines, and the task page fits the phone's width.
            assert await page.locator(".table.stacked").count() == 1
            await page.get_by_role("button", name="failed-one #1 details").click()
            sheet = page.get_by_role("dialog", name="failed-one #1")
            await expect(sheet.locator("table.attempts tbody tr")).to_have_count(1)
            await page.screenshot(path=str(tmp_path / "task-page-390.png"))
            for button in await sheet.get_by_role("button").all():
                box = await button.bounding_box()
                assert box and box["x"] >= 0 and box["x"] + box["width"] <= 390, await button.inner_text()
        finally:
            await cancel_unfinished(page, stack)


async def test_keyboard_operable_and_no_serious_accessibility_violations(page: Page, stack: Stack) -> None:
    await sign_up(page)
    async with scheduler_as(stack, await session_token(page)) as (stub, metadata):
        try:
            await submit_via_api(stub, metadata, "kb-failed", kind="fail", replicas=2)
            await submit_via_api(stub, metadata, "kb-running", workload_s=120)
            await expect(rows(page, "kb-failed", "FAILED")).to_have_count(2)
            await expect(rows(page, "kb-running", "RUNNING")).to_have_count(1)
            assert await serious_violations(page) == []

            # A row's checkbox with Space, the bulk bar's buttons with Enter, the dialog closed with Escape.
            await page.get_by_role("checkbox", name="Select kb-failed #1").focus()
            await page.keyboard.press("Space")
            bar = page.get_by_role("region", name="Selected tasks")
            await expect(bar).to_contain_text("1 task selected")
            await bar.get_by_role("button", name="Retry selected").focus()
            await page.keyboard.press("Enter")
            dialog = page.get_by_role("dialog", name="Retry 1 task?")
            await expect(dialog).to_be_visible()
            await expect(dialog.get_by_role("button", name="Go back")).to_be_focused()
            assert await serious_violations(page) == []
            await page.keyboard.press("Escape")
            await expect(dialog).to_be_hidden()
            await expect(rows(page, "kb-failed", "FAILED")).to_have_count(2)

            # The filter bar in Tab order after the search box: kind, then the status list.
            await page.get_by_label("Search").focus()
            await page.keyboard.press("Tab")
            await expect(page.locator("#kind-filter")).to_be_focused()
            await page.keyboard.press("Tab")
            await expect(page.locator("#status-filter")).to_be_focused()

            # A task's page from the keyboard: Enter on its name, Escape back to the same button.
            name = page.get_by_role("button", name="kb-running #1 details")
            await name.focus()
            await page.keyboard.press("Enter")
            sheet = page.get_by_role("dialog", name="kb-running #1")
            await expect(sheet).to_be_visible()
            await expect(sheet.locator("table.transitions tr[data-to=RUNNING]")).to_have_count(1)
            assert await serious_violations(page) == []
            await page.keyboard.press("Escape")
            await expect(sheet).to_be_hidden()
            await expect(name).to_be_focused()
        finally:
            await cancel_unfinished(page, stack)
