"""The dashboard in headless Chromium against the real stack: accounts, optimistic submit, the live
table fed by one WatchTasks stream, row actions, reconnect after a gateway dies, and isolation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.async_api import Page, Route, expect

from resilienttask.v1 import scheduler_pb2
from services.stack.stack import Stack
from tests.conftest import unique_email
from tests.e2e.dashboard import (
    PASSWORD,
    HeldCalls,
    NetworkLog,
    accessibility_violations,
    cancel_unfinished,
    expect_live,
    grpc_web_reply,
    log_in,
    rows,
    scheduler_as,
    session_token,
    sign_up,
    submit,
)
from tests.helpers import eventually
from tests.integration.watching import restart_gateway

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
# Records in the page, from now on, the fewest rows of one task name seen at any moment, and whether
# any progress bar ever stood between 0 and 100 %.
OBSERVE_ROWS = """(name) => {
  window.__fewest = Infinity;
  window.__midProgress = false;
  const observe = () => {
    const named = [...document.querySelectorAll('.tbody [role=row]')]
      .filter((row) => row.querySelector('.task-name').textContent === name);
    window.__fewest = Math.min(window.__fewest, named.length);
    for (const row of named) {
      const value = Number(row.querySelector('[role=progressbar]').getAttribute('aria-valuenow'));
      if (value > 0 && value < 100) window.__midProgress = true;
    }
  };
  const options = { subtree: true, childList: true, characterData: true, attributes: true };
  new MutationObserver(observe).observe(document.querySelector('.tbody'), options);
}"""


async def test_sign_up_log_out_and_log_in(page: Page) -> None:
    email = await sign_up(page)
    await expect(page.locator(".who")).to_have_text(email)
    await expect(page.locator(".card-value[data-metric=active]")).to_have_text("0")

    await page.get_by_role("button", name="Log out").click()
    await expect(page.get_by_role("button", name="Log in")).to_be_visible()
    assert await page.evaluate("() => sessionStorage.length") == 0

    await log_in(page, email, "not the password")
    await expect(page.locator(".form-error")).to_have_text("Invalid email or password")
    # By keyboard alone: Enter in the form logs in (the first button).
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_label("Password").press("Enter")
    await expect_live(page)
    await expect(page.locator(".who")).to_have_text(email)
    await expect(page.locator(".pool-summary")).to_contain_text("3 workers")

    # A reload keeps the tab's session; the server's own checks name the field they refuse.
    await page.reload()
    await expect_live(page)
    await page.get_by_role("button", name="Log out").click()
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign up").click()
    await expect(page.locator("#email-error")).to_have_text("Email is already registered")
    await page.get_by_label("Password").fill("short")
    await page.get_by_role("button", name="Log in").click()
    await expect(page.locator("#password-error")).to_have_text("Password must be 8 to 72 bytes long")


async def test_a_refused_token_returns_to_login_with_a_message(page: Page) -> None:
    await sign_up(page)
    await page.evaluate(
        """() => {
          const session = JSON.parse(sessionStorage.getItem('resilienttask.session'));
          sessionStorage.setItem('resilienttask.session', JSON.stringify({ ...session, token: 'x.y.z' }));
        }"""
    )
    await page.reload()
    await expect(page.locator(".notice")).to_have_text("Your session has ended. Please log in again.")
    assert await page.evaluate("() => sessionStorage.length") == 0


async def test_the_form_checks_what_the_server_checks(page: Page) -> None:
    log = NetworkLog().attach(page)
    await sign_up(page)
    await submit(page, "   ", replicas=51, workload_s="90000", max_runtime_s="0.9999", max_attempts=11)
    await expect(page.locator("[data-error-for=name]")).to_have_text("Name is required")
    await expect(page.locator("[data-error-for=replicas]")).to_have_text("Replicas must be between 1 and 50")
    await expect(page.locator("[data-error-for=workload]")).to_have_text("Workload must be at most 24h")
    await expect(page.locator("[data-error-for=max_runtime]")).to_have_text("Max runtime must be between 1s and 24h")
    await expect(page.locator("[data-error-for=max_attempts]")).to_have_text("Max attempts must be between 1 and 10")
    await expect(page.get_by_label("Name")).to_be_focused()
    await page.get_by_label("Replicas").fill("50")
    await expect(page.locator("[data-error-for=replicas]")).to_be_empty()
    assert log.named("SubmitTask") == []


async def test_a_server_refusal_marks_the_optimistic_rows_failed(page: Page) -> None:
    # The kinds list offers one no worker serves (as when a worker with custom kinds just left):
    # the form lets it through, the server refuses it, and says why next to the field.
    async def kinds_with_a_stale_one(route: Route) -> None:
        reply = scheduler_pb2.ListKindsResponse(kinds=["bogus", "fail", "sleep", "spin"])
        await route.fulfill(status=200, content_type="application/grpc-web+proto", body=grpc_web_reply(reply))

    await page.route("**/resilienttask.v1.SchedulerService/ListKinds", kinds_with_a_stale_one)
    await sign_up(page)
    await submit(page, "refused", replicas=3, kind="bogus")
    await expect(rows(page, "refused", "REFUSED")).to_have_count(3)
    await expect(page.locator("[data-error-for=kind]")).to_contain_text("Kind unknown kind 'bogus'")
    await expect(rows(page, "refused").first).to_contain_text("kind: unknown kind")
    await expect(page.get_by_role("button", name="Retry submission of refused #1")).to_have_count(0)
    await page.get_by_role("button", name="Dismiss refused #2").click()
    await expect(rows(page, "refused")).to_have_count(0)


async def test_a_retried_submit_never_duplicates_rows(page: Page) -> None:
    await sign_up(page)
    # Every answer is lost on the way back although the server acted: the page retries with the same
    # request_id, and the rows it shows are the server's tasks, once each.
    lost: list[str] = []

    async def lose_the_answer(route: Route) -> None:
        await route.fetch()
        await route.abort("connectionreset")
        lost.append(route.request.url)

    await page.route("**/resilienttask.v1.SchedulerService/SubmitTask", lose_the_answer)
    await submit(page, "answer-lost", replicas=2, workload_s="0")
    await expect(rows(page, "answer-lost", "SUCCEEDED")).to_have_count(2)

    async def three_attempts() -> bool:
        return len(lost) == 3

    await eventually(three_attempts, message="three attempts with one request_id")
    await expect(rows(page, "answer-lost", "SUCCEEDED")).to_have_count(2)
    await expect(page.locator(".card-value[data-metric=succeeded]")).to_have_text("2")
    await expect(rows(page)).to_have_count(2)

    # The server never got it: the rows offer a retry, which sends the same request again.
    await page.unroute("**/resilienttask.v1.SchedulerService/SubmitTask")
    await page.route("**/resilienttask.v1.SchedulerService/SubmitTask", lambda route: route.abort("failed"))
    await submit(page, "never-sent", replicas=2, workload_s="0")
    await expect(rows(page, "never-sent", "REFUSED")).to_have_count(2)
    await expect(rows(page, "never-sent").first).to_contain_text("the server could not be reached")
    await page.unroute("**/resilienttask.v1.SchedulerService/SubmitTask")
    await page.get_by_role("button", name="Retry submission of never-sent #1").click()
    await expect(rows(page, "never-sent", "SUCCEEDED")).to_have_count(2)
    await expect(rows(page, "never-sent")).to_have_count(2)


async def test_replicas_show_pending_then_real_rows_and_finish_without_polling(page: Page) -> None:
    log = NetworkLog().attach(page)
    await sign_up(page)
    held = await HeldCalls().install(page, "SubmitTask")

    await submit(page, "render", replicas=10, workload_s="4")
    pending = rows(page, "render", "PENDING")
    await expect(pending).to_have_count(10)
    assert len(held.held) == 1, "the server has not seen the submission yet"
    before = await rows(page, "render").locator(".task-meta").all_text_contents()
    assert before == [f"sleep · #{i}" for i in range(1, 11)]
    await page.evaluate(OBSERVE_ROWS, "render")

    held.released.set()
    await expect(pending).to_have_count(0)
    confirmed = rows(page, "render")
    await expect(confirmed).to_have_count(10)
    keys = [await row.get_attribute("data-key") for row in await confirmed.all()]
    assert all(UUID.match(key or "") for key in keys), keys
    assert await confirmed.locator(".task-meta").all_text_contents() == before, "rows kept their order"
    assert await page.evaluate("() => window.__fewest") == 10, "no row vanished while being confirmed"

    await expect(rows(page, "render", "SUCCEEDED")).to_have_count(10, timeout=60_000)
    assert await page.evaluate("() => window.__midProgress"), "progress moved through the bars"
    await expect(page.locator(".card-value[data-metric=succeeded]")).to_have_text("10")

    watches = log.named("WatchTasks")
    assert len(watches) == 1, "one stream"
    assert not watches[0].finished, "the stream is still open"
    assert len(log.named("SubmitTask")) == 1
    assert [c.method for c in log.calls if c.method not in ("WatchTasks", "SubmitTask", "ListKinds")] == []
    assert len(log.named("ListKinds")) <= 1, "the kinds are asked for once, not polled"


async def test_cancel_retry_and_delete_from_the_row(page: Page, stack: Stack) -> None:
    await sign_up(page)
    try:
        await submit(page, "long-job", workload_s="120")
        row = rows(page, "long-job")
        await expect(row).to_have_attribute("data-status", "RUNNING")
        await page.get_by_role("button", name="Cancel long-job #1").click()
        await expect(row).to_have_attribute("data-status", "CANCELLED")
        await expect(page.locator(".card-value[data-metric=cancelled]")).to_have_text("1")

        await page.get_by_role("button", name="Retry long-job #1").click()
        await expect(row).to_have_attribute("data-status", "RUNNING")
        await page.get_by_role("button", name="Cancel long-job #1").click()
        await expect(row).to_have_attribute("data-status", "CANCELLED")
        await page.get_by_role("button", name="Delete long-job #1").click()
        await expect(row).to_have_count(0)

        await submit(page, "batch-job", replicas=3, workload_s="120")
        await expect(rows(page, "batch-job", "RUNNING")).to_have_count(3)
        await page.get_by_role("button", name="Cancel batch of batch-job #2").click()
        await expect(rows(page, "batch-job", "CANCELLED")).to_have_count(3)
    finally:
        await cancel_unfinished(page, stack)


async def test_details_fetch_payload_and_result_on_demand(page: Page, stack: Stack) -> None:
    """The live stream carries summaries; a task's payload, result and whole error come from GetTask."""
    log = NetworkLog().attach(page)
    await sign_up(page)
    async with scheduler_as(stack, await session_token(page)) as (stub, metadata):
        request = scheduler_pb2.SubmitTaskRequest(name="with-details", max_attempts=1)
        request.payload.update({"image": "cat.png", "sizes": [64, 128]})
        request.workload.FromMilliseconds(1500)
        await stub.SubmitTask(request, metadata=metadata, timeout=10)
    row = rows(page, "with-details")
    await expect(row).to_have_attribute("data-status", "RUNNING")
    assert not log.named("GetTask"), "nothing is fetched before the details are asked for"

    await page.get_by_role("button", name="with-details #1 details").click()
    dialog = page.get_by_role("dialog", name="with-details #1")
    await expect(dialog.locator("[data-field=payload]")).to_contain_text('"cat.png"')
    # The dialog follows the task: once the stream says it finished, the result is fetched.
    await expect(dialog.locator("[data-field=result]")).to_contain_text('"slept_s": 1.5', timeout=30_000)
    await expect(dialog).to_contain_text("Succeeded")
    assert len(log.named("GetTask")) >= 2
    await dialog.get_by_role("button", name="Close").click()
    await expect(dialog).to_be_hidden()

    # A failed task: its error in full, and no result.
    await submit(page, "long-error", kind="fail", workload_s="0", max_attempts=1)
    await expect(rows(page, "long-error", "FAILED")).to_have_count(1)
    await page.get_by_role("button", name="long-error #1 details").click()
    failed = page.get_by_role("dialog", name="long-error #1")
    await expect(failed.locator(".details-error")).to_contain_text("simulated failure of attempt 1")
    await expect(failed.locator("[data-field=result]")).to_have_text("—")


async def test_clear_history_empties_the_finished_rows(page: Page, stack: Stack) -> None:
    await sign_up(page)
    try:
        await submit(page, "quick", replicas=3, workload_s="0")
        await submit(page, "keeper", workload_s="120")
        await expect(rows(page, "quick", "SUCCEEDED")).to_have_count(3)
        await expect(rows(page, "keeper", "RUNNING")).to_have_count(1)

        await page.get_by_role("button", name="Clear history").click()
        dialog = page.get_by_role("dialog", name="Clear history?")
        await expect(dialog).to_contain_text("your 3 finished tasks")
        await dialog.get_by_role("button", name="Keep them").click()
        await expect(rows(page, "quick")).to_have_count(3)

        await page.get_by_role("button", name="Clear history").click()
        await dialog.get_by_role("button", name="Clear history").click()
        await expect(rows(page, "quick")).to_have_count(0)
        await expect(rows(page, "keeper", "RUNNING")).to_have_count(1)
        await expect(page.locator(".card-value[data-metric=succeeded]")).to_have_text("0")
        await expect(page.locator(".notice-line")).to_have_text("Removed 3 finished tasks.")
    finally:
        await cancel_unfinished(page, stack)


async def test_reconnects_after_the_gateway_dies_and_misses_nothing(page: Page, stack: Stack) -> None:
    log = NetworkLog().attach(page)
    await sign_up(page)
    token = await session_token(page)
    await submit(page, "before-the-drop", workload_s="0")
    await expect(rows(page, "before-the-drop", "SUCCEEDED")).to_have_count(1)

    # Reopened streams wait until the task below exists, so it can only arrive by resuming.
    held = await HeldCalls().install(page, "WatchTasks")
    gateways = stack.names("gateway")
    for name in gateways:
        stack.processes[name].kill()
    await expect(page.locator(".connection")).not_to_have_attribute("data-state", "live")
    for name in gateways:
        await restart_gateway(stack, name)

    async with scheduler_as(stack, token) as (stub, metadata):
        request = scheduler_pb2.SubmitTaskRequest(name="while-away", request_id=unique_email("r"))

        await stub.SubmitTask(request, metadata=metadata, timeout=10)

    async def reconnect_tried() -> bool:
        return bool(held.held)

    await eventually(reconnect_tried, message="the page tried to reconnect")
    held.released.set()
    await expect_live(page)
    await expect(rows(page, "while-away")).to_have_count(1)
    await expect(rows(page, "while-away", "SUCCEEDED")).to_have_count(1)
    await expect(rows(page, "before-the-drop")).to_have_count(1)

    reopened = log.named("WatchTasks")[1]
    body = reopened.request.post_data_buffer or b""
    assert len(body) > 5, "the reopened stream carried the last resume token"


async def test_a_second_user_never_sees_the_first_users_tasks(page: Page, stack: Stack) -> None:
    await sign_up(page)
    await submit(page, "first-users-secret", workload_s="0")
    await expect(rows(page, "first-users-secret", "SUCCEEDED")).to_have_count(1)

    other = await page.context.browser.new_context(base_url=page.url)  # type: ignore[union-attr]
    try:
        second = await other.new_page()
        await sign_up(second)
        await expect(second.locator(".empty")).to_have_text("No tasks yet. Submit one and it appears here at once.")
        await submit(page, "first-users-later", workload_s="0")
        await expect(rows(page, "first-users-later", "SUCCEEDED")).to_have_count(1)
        await submit(second, "second-users-own", workload_s="0")
        await expect(rows(second, "second-users-own", "SUCCEEDED")).to_have_count(1)
        await expect(rows(second)).to_have_count(1)
        await expect(second.locator(".card-value[data-metric=succeeded]")).to_have_text("1")
        await expect(rows(page, "second-users-own")).to_have_count(0)
    finally:
        await other.close()


async def test_two_thousand_rows_stay_virtual_and_reachable(page: Page, stack: Stack) -> None:
    await sign_up(page)
    token = await session_token(page)
    batches = []
    try:
        async with scheduler_as(stack, token) as (stub, metadata):
            for i in range(40):
                request = scheduler_pb2.SubmitTaskRequest(
                    name=f"bulk-{i:02d}", replicas=50, max_attempts=1, request_id=f"bulk-{i}"
                )
                request.workload.FromSeconds(3600)
                reply = await stub.SubmitTask(request, metadata=metadata, timeout=30)
                batches.append(reply.tasks[0].batch_id)
        await expect(page.locator(".shown-count")).to_have_text("2000 shown")
        await expect(page.locator(".card-value[data-metric=active]")).to_have_text("2000")
        # Only the rows in view (and a few around them) exist in the page.
        assert await rows(page).count() < 60
        await page.locator(".viewport").evaluate("(el) => { el.scrollTop = el.scrollHeight; }")
        await expect(page.locator('.tbody [role=row][aria-rowindex="2001"]')).to_have_count(1)
        await expect(rows(page, "bulk-00").last).to_be_visible()
        assert await rows(page).count() < 60

        # A fresh page's snapshot holds the newest tasks only; older ones load on request, never by polling.
        log = NetworkLog().attach(page)
        await page.reload()
        await expect_live(page)
        # The snapshot has been drawn (the button's state is set in the same frame), and it is partial.
        await expect(page.locator(".shown-count")).to_have_text(re.compile(r"^\d+ shown$"))
        older = page.locator(".table-foot button")
        await expect(older).to_be_visible()
        while await older.is_visible():
            await older.click()
            await page.wait_for_function(
                "() => { const b = document.querySelector('.table-foot button'); return b.hidden || !b.disabled; }"
            )
        await expect(page.locator(".shown-count")).to_have_text("2000 shown")
        assert 1 <= len(log.named("ListTasks")) <= 4
    finally:
        async with scheduler_as(stack, token) as (stub, metadata):
            for batch_id in batches:
                await stub.CancelBatch(scheduler_pb2.CancelBatchRequest(batch_id=batch_id), metadata=metadata)

            async def all_stopped() -> bool:
                # Running replicas are CANCELLING until their worker stops them; only then can they be cleared.
                reply = await stub.GetStats(scheduler_pb2.GetStatsRequest(), metadata=metadata)
                return reply.stats.active == 0

            await eventually(all_stopped, timeout_s=60, message="every replica stopped")
            await stub.ClearHistory(scheduler_pb2.ClearHistoryRequest(), metadata=metadata)
    await expect(page.locator(".shown-count")).to_have_text("0 shown", timeout=60_000)


async def test_dashboard_screenshot_with_tasks_in_several_states(page: Page, stack: Stack) -> None:
    await sign_up(page)
    try:
        await submit(page, "nightly-report", replicas=3, workload_s="0.5")
        await submit(page, "flaky-import", kind="fail", workload_s="0.5", max_attempts=1)
        await submit(page, "runaway-loop", kind="spin", workload_s="30", max_runtime_s="1", max_attempts=1)
        await submit(page, "image-resize", workload_s="120")
        await expect(rows(page, "image-resize", "RUNNING")).to_have_count(1)
        await page.get_by_role("button", name="Cancel image-resize #1").click()
        await submit(page, "video-transcode", replicas=4, workload_s="40")
        await expect(rows(page, "nightly-report", "SUCCEEDED")).to_have_count(3)
        await expect(rows(page, "flaky-import", "FAILED")).to_have_count(1)
        await expect(rows(page, "runaway-loop", "TIMED_OUT")).to_have_count(1)
        await expect(rows(page, "image-resize", "CANCELLED")).to_have_count(1)
        await expect(rows(page, "video-transcode", "RUNNING")).to_have_count(4)
        await page.wait_for_function(
            "() => [...document.querySelectorAll('.tbody [data-status=RUNNING] [role=progressbar]')]"
            ".every((bar) => Number(bar.getAttribute('aria-valuenow')) >= 10)"
        )
        await page.get_by_label("Name").fill("")
        await page.evaluate("() => document.activeElement.blur()")
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "dashboard.png"))
    finally:
        await cancel_unfinished(page, stack)


async def test_accessible_and_responsive(page: Page, stack: Stack) -> None:
    await page.goto("/")
    assert await accessibility_violations(page) == []
    await sign_up(page)
    try:
        await submit(page, "checked", replicas=2, workload_s="0")
        await submit(page, "still-going", workload_s="60")
        await expect(rows(page, "checked", "SUCCEEDED")).to_have_count(2)
        await expect(rows(page, "still-going", "RUNNING")).to_have_count(1)
        await submit(page, "", replicas=0)
        await expect(page.locator("[data-error-for=name]")).to_have_text("Name is required")
        assert await accessibility_violations(page) == []

        # Filtering by status, with the keyboard: the status list opens with Enter, a status is ticked with Space.
        await page.locator("#status-filter").focus()
        await page.keyboard.press("Enter")
        await page.get_by_role("checkbox", name="Running", exact=True).focus()
        await page.keyboard.press("Space")
        await expect(rows(page)).to_have_count(1)
        await expect(rows(page, "still-going")).to_have_count(1)
        await page.keyboard.press("Space")
        await page.get_by_role("checkbox", name="Succeeded", exact=True).check()
        await expect(rows(page, "checked")).to_have_count(2)
        await expect(rows(page)).to_have_count(2)
        await page.keyboard.press("Escape")
        await expect(page.get_by_role("checkbox", name="Succeeded", exact=True)).to_be_hidden()

        # A phone-sized screen: nothing spills sideways except the table, which scrolls in its own frame.
        await page.set_viewport_size({"width": 390, "height": 844})
        overflow = await page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0
        await expect(page.get_by_role("button", name="Submit", exact=True)).to_be_visible()
    finally:
        await cancel_unfinished(page, stack)
