"""Fair sharing in the dashboard, in Chromium on the real stack: priority and concurrency key from the submit form
to the task table, a queued task's wait reason, and the Operator view (pause switch, rate limits) that only
operators are offered."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import pytest
from playwright.async_api import Page, Route, expect

from resilienttask.v1 import operator_pb2, operator_pb2_grpc, scheduler_pb2
from services.stack.stack import Stack
from tests.e2e.dashboard import (
    NetworkLog,
    cancel_unfinished,
    expect_live,
    open_view,
    rows,
    serious_violations,
    session_token,
    sign_up,
    submit,
)

pytestmark = pytest.mark.e2e

# Kinds the other browser tests use little: pausing one for a moment holds up nobody else's test.
PAUSED_KIND = "spin"
LIMITED_KIND = "fail"


async def grant_operator(stack: Stack, email: str) -> None:
    """Grant the role the way an administrator does: the server-side command, with the database's URL."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.gateway.operators",
        "grant",
        email,
        env={**os.environ, "DATABASE_URL": stack.database_url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, (out, err)


@asynccontextmanager
async def operator_api(
    stack: Stack, page: Page
) -> AsyncIterator[tuple[operator_pb2_grpc.OperatorServiceStub, tuple[tuple[str, str], ...]]]:
    async with grpc.aio.insecure_channel(stack.edge_address) as channel:
        token = await session_token(page)
        yield operator_pb2_grpc.OperatorServiceStub(channel), (("authorization", f"Bearer {token}"),)


async def sign_up_operator(page: Page, stack: Stack) -> None:
    """A new user made operator; the page asks again on reload and then offers the Operator view."""
    email = await sign_up(page)
    await expect(page.get_by_role("navigation", name="Views")).to_have_attribute("data-operator", "not-operator")
    await grant_operator(stack, email)
    await page.reload()
    await expect_live(page)
    await expect(page.get_by_role("navigation", name="Views")).to_have_attribute("data-operator", "operator")
    await open_view(page, "Operator")


async def test_priority_and_concurrency_key_from_the_form_to_the_table(page: Page) -> None:
    log = NetworkLog().attach(page)
    await sign_up(page)
    form = page.get_by_role("form", name="New task")
    # Checked in the page as the server checks it: a key needs its limit; nothing is sent.
    await submit(page, "no-limit", concurrency_key="customer-7")
    await expect(page.locator("[data-error-for=concurrency_limit]")).to_have_text(
        "Concurrency limit must be between 1 and 1000 with a concurrency key"
    )
    await expect(form.get_by_label("Concurrency limit")).to_be_focused()
    assert log.named("SubmitTask") == []

    # One running, two held for the key: each row says its priority, its key and what it waits for.
    await submit(
        page, "keyed", replicas=3, workload_s="30", priority=5, concurrency_key="customer-7", concurrency_limit="1"
    )
    try:
        await expect(rows(page, "keyed")).to_have_count(3)
        for row in await rows(page, "keyed").all():
            await expect(row.locator(".col-priority")).to_have_text("5")
            await expect(row.locator(".col-key .key-name")).to_have_text("customer-7")
            await expect(row.locator(".col-key .key-limit")).to_have_text("max 1")
        await expect(rows(page, "keyed", "RUNNING")).to_have_count(1)
        held = rows(page, "keyed", "QUEUED")
        await expect(held).to_have_count(2)
        await expect(held.locator(".wait-badge")).to_have_text(["waiting: key customer-7 (1 running)"] * 2)
        await expect(rows(page, "keyed", "RUNNING").locator(".wait-badge")).to_be_hidden()
    finally:
        await page.get_by_role("button", name="Cancel batch of keyed #1").click()
    await expect(rows(page, "keyed", "CANCELLED")).to_have_count(3)

    # A refusal the server still sends (here a request altered on its way) is shown next to the field it names.
    async def over_the_limit(route: Route) -> None:
        body = route.request.post_data_buffer or b""
        request = scheduler_pb2.SubmitTaskRequest.FromString(body[5:])
        request.concurrency_limit = 1001
        payload = request.SerializeToString()
        await route.continue_(post_data=b"\x00" + len(payload).to_bytes(4, "big") + payload)

    await page.route("**/resilienttask.v1.SchedulerService/SubmitTask", over_the_limit)
    await submit(page, "altered", concurrency_key="customer-8", concurrency_limit="2")
    await expect(page.locator("[data-error-for=concurrency_limit]")).to_have_text(
        "Concurrency limit must be between 1 and 1000 with a concurrency_key"
    )
    await expect(rows(page, "altered", "REFUSED")).to_have_count(1)


async def test_a_user_who_is_not_an_operator_is_not_offered_the_operator_view(page: Page) -> None:
    await sign_up(page)
    # The server answered (PERMISSION_DENIED), and the page stayed signed in.
    await expect(page.get_by_role("navigation", name="Views")).to_have_attribute("data-operator", "not-operator")
    await expect(page.get_by_role("button", name="Operator", exact=True)).to_be_hidden()
    await expect_live(page)
    await expect(page.get_by_role("button", name="Log out")).to_be_visible()


async def test_an_operator_pauses_a_kind_and_its_new_task_waits_until_resumed(page: Page, stack: Stack) -> None:
    await sign_up_operator(page, stack)
    row = page.locator(f"tr[data-kind={PAUSED_KIND}]")
    switch = page.get_by_role("switch", name=f"Pause {PAUSED_KIND}")
    await expect(switch).to_have_attribute("aria-checked", "false")
    async with operator_api(stack, page) as (operators, metadata):
        try:
            # By keyboard: the switch takes focus and Space flips it.
            await switch.focus()
            await page.keyboard.press("Space")
            await expect(switch).to_have_attribute("aria-checked", "true")
            await expect(row.locator(".switch-state")).to_contain_text("Paused since")
            await expect(switch).to_be_focused()
            assert await serious_violations(page) == []

            await open_view(page, "Tasks")
            await submit(page, "after-pause", kind=PAUSED_KIND, workload_s="0.2")
            queued = rows(page, "after-pause", "QUEUED")
            await expect(queued.locator(".wait-badge")).to_have_text("kind paused")
            # The operator view counts it among the kind's waiting tasks; it has still not started.
            await open_view(page, "Operator")
            await expect(row.locator("[data-count=waiting]")).to_have_text("1")
            await open_view(page, "Tasks")
            await expect(queued).to_have_count(1)

            await open_view(page, "Operator")
            await switch.click()
            await expect(switch).to_have_attribute("aria-checked", "false")
            await expect(row.locator(".switch-state")).to_have_text("Running")
            await open_view(page, "Tasks")
            await expect(rows(page, "after-pause", "SUCCEEDED")).to_have_count(1)
            await expect(rows(page, "after-pause").locator(".wait-badge")).to_be_hidden()
        finally:
            await operators.ResumeKind(operator_pb2.ResumeKindRequest(kind=PAUSED_KIND), metadata=metadata, timeout=10)
            await cancel_unfinished(page, stack)


async def test_an_operator_sets_edits_and_clears_a_rate_limit(page: Page, stack: Stack) -> None:
    log = NetworkLog().attach(page)
    await sign_up_operator(page, stack)
    row = page.locator(f"tr[data-kind={LIMITED_KIND}]")
    async with operator_api(stack, page) as (operators, metadata):
        try:
            await expect(row.locator(".rate-text")).to_have_text("none")
            await page.get_by_role("button", name=f"Set rate limit of {LIMITED_KIND}").click()
            form = page.get_by_role("form", name=f"Rate limit of {LIMITED_KIND}")
            await form.get_by_label("Starts").fill("0")
            await form.get_by_role("button", name="Save").click()
            await expect(form.locator(".field-error").first).to_have_text(
                "Starts must be a whole number from 1 to 100,000"
            )
            await form.get_by_label("Starts").fill("7")
            await form.get_by_label("Per (s)").fill("2")
            await form.get_by_role("button", name="Save").click()
            await expect(row.locator(".rate-text")).to_have_text("7 per 2 s")

            # What the server holds, and what the page shows after a reload: the same limit.
            listed = await operators.ListKindControls(
                operator_pb2.ListKindControlsRequest(), metadata=metadata, timeout=10
            )
            [control] = [k for k in listed.kinds if k.kind == LIMITED_KIND]
            assert (control.rate_limit.starts, control.rate_limit.period.ToMilliseconds()) == (7, 2000)
            await page.reload()
            await expect_live(page)
            await open_view(page, "Operator")
            await expect(row.locator(".rate-text")).to_have_text("7 per 2 s")

            await page.get_by_role("button", name=f"Edit rate limit of {LIMITED_KIND}").click()
            await expect(form.get_by_label("Starts")).to_have_value("7")
            await expect(form.get_by_label("Per (s)")).to_have_value("2")
            await form.get_by_label("Per (s)").fill("60")
            await form.get_by_label("Per (s)").press("Enter")
            await expect(row.locator(".rate-text")).to_have_text("7 per 1 min")

            await page.get_by_role("button", name=f"Clear rate limit of {LIMITED_KIND}").click()
            await expect(row.locator(".rate-text")).to_have_text("none")
            listed = await operators.ListKindControls(
                operator_pb2.ListKindControlsRequest(), metadata=metadata, timeout=10
            )
            assert not [k for k in listed.kinds if k.kind == LIMITED_KIND and k.HasField("rate_limit")]
            assert log.named("SubmitTask") == []
        finally:
            await operators.ClearKindRateLimit(
                operator_pb2.ClearKindRateLimitRequest(kind=LIMITED_KIND), metadata=metadata, timeout=10
            )
