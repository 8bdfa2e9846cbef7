"""What the browser tests do on the page (sign up, submit, find rows) and what they watch on the wire."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import grpc
from google.protobuf.message import Message
from playwright.async_api import Locator, Page, Request, Route, expect

from resilienttask.v1 import schedule_pb2, schedule_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc
from services.stack.stack import Stack
from tests.conftest import unique_email

PASSWORD = "correct horse battery"
SERVICE_PREFIX = "/resilienttask.v1.SchedulerService/"
Stub = scheduler_pb2_grpc.SchedulerServiceStub
Metadata = tuple[tuple[str, str], ...]


async def sign_up(page: Page, email: str | None = None, password: str = PASSWORD) -> str:
    """Sign up a new user on the login page and wait until the live feed is connected."""
    email = email or unique_email("web")
    await page.goto("/")
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Sign up").click()
    await expect_live(page)
    return email


async def log_in(page: Page, email: str, password: str = PASSWORD) -> None:
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Log in").click()


async def expect_live(page: Page) -> None:
    await expect(page.locator(".connection")).to_have_attribute("data-state", "live")


async def submit(
    page: Page,
    name: str,
    *,
    replicas: int = 1,
    workload_s: str = "1",
    kind: str = "sleep",
    max_runtime_s: str = "",
    max_attempts: int = 3,
    start_after_s: str = "",
    priority: int = 3,
    concurrency_key: str = "",
    concurrency_limit: str = "",
) -> None:
    # The form's own fields: the task list's filters have a Kind too.
    form = page.get_by_role("form", name="New task")
    await form.get_by_label("Priority").select_option(str(priority))
    await form.get_by_label("Concurrency key").fill(concurrency_key)
    await form.get_by_label("Concurrency limit").fill(concurrency_limit)
    await form.get_by_label("Name").fill(name)
    await form.get_by_label("Kind").select_option(kind)
    await form.get_by_label("Workload (s)").fill(workload_s)
    await form.get_by_label("Max runtime (s)").fill(max_runtime_s)
    await form.get_by_label("Replicas").fill(str(replicas))
    await form.get_by_label("Max attempts").fill(str(max_attempts))
    await form.get_by_label("Start after (s)").fill(start_after_s)
    await form.get_by_role("button", name="Submit", exact=True).click()


async def show_statuses(page: Page, *labels: str) -> None:
    """Narrow the task list to these statuses (none: any status) with the filter bar's status list."""
    await page.locator("#status-filter").click()
    for box in await page.locator(".status-options input[type=checkbox]").all():
        label = (await box.evaluate("(el) => el.parentElement.textContent")).strip()
        await box.set_checked(label in labels)
    await page.keyboard.press("Escape")


def rows(page: Page, name: str | None = None, status: str | None = None) -> Locator:
    """Task rows, optionally only those with this task name and/or data-status (RUNNING, PENDING, ...)."""
    selector = ".tbody [role=row]"
    if status:
        selector += f'[data-status="{status}"]'
    found = page.locator(selector)
    if name:
        found = found.filter(has=page.locator(".task-name", has_text=name))
    return found


async def session_token(page: Page) -> str:
    raw = await page.evaluate("() => sessionStorage.getItem('resilienttask.session')")
    assert raw, "the page holds no session"
    token = await page.evaluate("(raw) => JSON.parse(raw).token", raw)
    return str(token)


@asynccontextmanager
async def scheduler_as(stack: Stack, token: str) -> AsyncIterator[tuple[Stub, Metadata]]:
    """A SchedulerService stub through Envoy, and the metadata that acts as the page's user."""
    async with grpc.aio.insecure_channel(stack.edge_address) as channel:
        yield scheduler_pb2_grpc.SchedulerServiceStub(channel), (("authorization", f"Bearer {token}"),)


async def cancel_unfinished(page: Page, stack: Stack) -> None:
    """Free the worker slots a test's long tasks hold, so later tests do not wait behind them: its schedules are
    deleted (they would fire on), its queued, running and scheduled tasks cancelled."""
    token = await session_token(page)
    async with grpc.aio.insecure_channel(stack.edge_address) as channel:
        schedules = schedule_pb2_grpc.ScheduleServiceStub(channel)
        metadata: Metadata = (("authorization", f"Bearer {token}"),)
        listed = await schedules.ListSchedules(schedule_pb2.ListSchedulesRequest(page_size=500), metadata=metadata)
        for schedule in listed.schedules:
            await schedules.DeleteSchedule(
                schedule_pb2.DeleteScheduleRequest(schedule_id=schedule.id), metadata=metadata
            )
    async with scheduler_as(stack, token) as (stub, metadata):
        page_token = ""
        while True:
            reply = await stub.ListTasks(
                scheduler_pb2.ListTasksRequest(page_size=500, page_token=page_token), metadata=metadata, timeout=10
            )
            for task in reply.tasks:
                if task.status in (1, 2, 8):  # QUEUED, RUNNING, SCHEDULED
                    await stub.CancelTask(scheduler_pb2.CancelTaskRequest(task_id=task.id), metadata=metadata)
            if not reply.next_page_token:
                return
            page_token = reply.next_page_token


@dataclass
class Call:
    method: str
    request: Request
    finished: bool = False


@dataclass
class NetworkLog:
    """Every SchedulerService call the page makes, and whether its response body has ended."""

    calls: list[Call] = field(default_factory=list)

    def attach(self, page: Page) -> NetworkLog:
        page.on("request", self._started)
        page.on("requestfinished", self._ended)
        page.on("requestfailed", self._ended)
        return self

    def _started(self, request: Request) -> None:
        path = urlparse(request.url).path
        if path.startswith(SERVICE_PREFIX):
            self.calls.append(Call(path.removeprefix(SERVICE_PREFIX), request))

    def _ended(self, request: Request) -> None:
        for call in self.calls:
            if call.request is request:
                call.finished = True

    def named(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]


class HeldCalls:
    """Holds the page's calls to one method until released: what the server would answer later."""

    def __init__(self) -> None:
        self.held: list[Request] = []
        self.released = asyncio.Event()

    async def handle(self, route: Route) -> None:
        self.held.append(route.request)
        await self.released.wait()
        await route.continue_()

    async def install(self, page: Page, method: str) -> HeldCalls:
        await page.route(f"**{SERVICE_PREFIX}{method}", self.handle)
        return self


def grpc_web_reply(message: Message) -> bytes:
    """A grpc-web response body: one message frame, then a trailer frame saying OK."""
    payload = message.SerializeToString()
    trailer = b"grpc-status:0\r\n"
    return b"\x00" + len(payload).to_bytes(4, "big") + payload + b"\x80" + len(trailer).to_bytes(4, "big") + trailer


AXE = Path(__file__).resolve().parents[2] / "clients" / "web" / "node_modules" / "axe-core" / "axe.min.js"


async def accessibility_violations(page: Page) -> list[dict[str, object]]:
    """What axe-core (from the dashboard's npm lockfile) finds wrong on the page as it is now."""
    await page.add_script_tag(path=str(AXE))
    return await page.evaluate(
        """async () => (await axe.run(document, { resultTypes: ['violations'] })).violations
             .map((v) => ({ id: v.id, help: v.help, nodes: v.nodes.map((n) => n.target.join(' ')) }))"""
    )


async def serious_violations(page: Page) -> list[dict[str, object]]:
    """axe-core's serious and critical findings on the page as it is now (open dialogs included)."""
    await page.add_script_tag(path=str(AXE))
    return await page.evaluate(
        """async () => (await axe.run(document, { resultTypes: ['violations'] })).violations
             .filter((v) => v.impact === 'serious' || v.impact === 'critical')
             .map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.map((n) => n.target.join(' ')) }))"""
    )


async def open_view(page: Page, name: str) -> None:
    """Switch the dashboard to its Tasks or Schedules view."""
    await page.get_by_role("button", name=name, exact=True).click()
    await expect(page.get_by_role("button", name=name, exact=True)).to_have_attribute("aria-pressed", "true")


async def create_schedule(
    page: Page, name: str, *, every_s: str = "", cron: str = "", workload_s: str = "0.2", overlap: str = ""
) -> None:
    """Fill the New schedule form (an interval, or a cron expression) and send it."""
    await page.get_by_label("Schedule name").fill(name)
    if overlap:
        await page.get_by_label("If still running").select_option(label=overlap)
    await page.get_by_label("Timing").select_option("interval" if every_s else "cron")
    if every_s:
        await page.get_by_label("Every (s)").fill(every_s)
    else:
        await page.get_by_label("Cron expression").fill(cron)
    await page.get_by_label("Task workload (s)").fill(workload_s)
    await page.get_by_role("button", name="Create schedule").click()


def schedule_row(page: Page, name: str) -> Locator:
    return page.locator("tr[data-schedule-id]").filter(has=page.locator(".schedule-name", has_text=name))


async def fired(row: Locator) -> int:
    return int(await row.locator("[data-count=fired]").inner_text())


async def fired_at_least(row: Locator, count: int) -> bool:
    return await fired(row) >= count
