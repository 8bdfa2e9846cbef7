"""The dashboard with 10,000 tasks of one user, in Chromium (Debian's, driven by Playwright).

    .venv/bin/python -m bench.dashboard_scale                  # 10,000 tasks, changes as fast as the stack takes
    .venv/bin/python -m bench.dashboard_scale --rate 1000      # changes paced at 1,000 tasks per second
    .venv/bin/python -m bench.dashboard_scale --doc docs/benchmarks-dashboard.md

A throwaway stack (2 gateways, 1 scheduler, no workers: the only changes are the benchmark's own; every per-user
limit off) serves the built dashboard (make web). One user gets --tasks tasks, submitted with a start a day ahead
(SCHEDULED, so no worker takes them and they change only when told), in batches of 50. Then, in the page:

- first rows: from the start of the navigation (a reload, signed in) to the first rows painted. The live
  snapshot holds the newest 200 tasks; the rest come in pages of 500 from ListTasks as the table is scrolled;
- all loaded: from the first scroll to the bottom to "10000 shown" (20 ListTasks round trips, each merged and
  drawn): everything a user waits for to have all 10,000 in the table;
- render: a filter matching all 10,000 tasks is applied and removed; the time from the change to the next
  frame that shows it (the whole list filtered, sorted rows kept, the rows in view redrawn);
- changes: every task is cancelled by CancelBatch (50 tasks a call, 4 calls in flight, paced by --rate when
  given), so each of the 10,000 rows changes state once; the page's frames are timed with requestAnimationFrame
  while the changes arrive (p50, p95, max frame time), with the rate reached (tasks changed per second between
  the first call and the moment the page's Cancelled count reached 10,000).

measure() is the same scenario for tests/e2e/test_dashboard_scale.py, which records the figures (it asserts
counts and that the table stays virtual, never a time).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
from playwright.async_api import Page, async_playwright

from resilienttask.v1 import auth_pb2, auth_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc
from services.core.limits import UserLimits
from services.stack.stack import Stack, StackConfig

REPLICAS = 50
IN_FLIGHT = 4
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"]
Metadata = tuple[tuple[str, str], ...]
LIVE = "() => document.querySelector('.connection')?.dataset.state === 'live'"

# Times every animation frame from now until window.__stopFrames() (in the page's clock).
RECORD_FRAMES = """() => {
  window.__frames = [];
  let last = performance.now();
  let on = true;
  const tick = (t) => { window.__frames.push(t - last); last = t; if (on) requestAnimationFrame(tick); };
  requestAnimationFrame(tick);
  window.__stopFrames = () => { on = false; return window.__frames; };
}"""

# Scrolls the table to its end whenever it grows, until `count` rows are shown; returns the time it took.
LOAD_ALL = """async (count) => {
  const viewport = document.querySelector('.viewport');
  const shown = () => Number(document.querySelector('.shown-count').textContent.split(' ')[0]);
  const started = performance.now();
  while (shown() < count) {
    viewport.scrollTop = viewport.scrollHeight;
    await new Promise((done) => requestAnimationFrame(done));
  }
  return performance.now() - started;
}"""

# Applies a filter (kind = the tasks' kind: all of them match) and times the change to the frame that shows it.
RENDER_ALL = """async (count) => {
  const kind = document.querySelector('#kind-filter');
  if (![...kind.options].some((o) => o.value === 'sleep')) kind.append(new Option('sleep', 'sleep'));
  const times = [];
  for (const value of ['sleep', '', 'sleep', '']) {
    const started = performance.now();
    kind.value = value;
    kind.dispatchEvent(new Event('change'));
    await new Promise((done) => requestAnimationFrame(() => setTimeout(done)));
    if (Number(document.querySelector('.shown-count').textContent.split(' ')[0]) !== count) return null;
    times.push(performance.now() - started);
  }
  return times;
}"""


@dataclass
class Figures:
    tasks: int
    first_rows_ms: float
    all_loaded_ms: float
    list_calls: int
    render_ms: list[float]
    changes: int
    changes_s: float
    changes_per_s: float
    frames: int
    frame_p50_ms: float
    frame_p95_ms: float
    frame_max_ms: float
    rows_in_dom_max: int


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def seed(stub: Any, metadata: Metadata, count: int) -> list[str]:
    """`count` tasks in batches of 50, due in a day (so untouched until the benchmark cancels them)."""
    gate = asyncio.Semaphore(IN_FLIGHT)
    prefix = uuid.uuid4().hex[:8]

    async def one(i: int) -> str:
        request = scheduler_pb2.SubmitTaskRequest(
            name=f"scale-{i:03d}", replicas=REPLICAS, max_attempts=1, request_id=f"{prefix}-{i}"
        )
        request.delay.FromSeconds(86_400)
        async with gate:
            reply = await stub.SubmitTask(request, metadata=metadata, timeout=60)
        return str(reply.tasks[0].batch_id)

    return list(await asyncio.gather(*(one(i) for i in range(count // REPLICAS))))


async def drive(stub: Any, metadata: Metadata, batches: list[str], rate_per_s: float | None) -> float:
    """Cancel every batch (50 tasks each); paced at rate_per_s tasks a second when given. Returns when it started."""
    gate = asyncio.Semaphore(IN_FLIGHT)
    started = time.perf_counter()

    async def one(i: int, batch_id: str) -> None:
        if rate_per_s:
            # Pacing the load itself (not waiting for a result): call i goes at its slot in the schedule.
            await asyncio.sleep(max(0.0, started + i * REPLICAS / rate_per_s - time.perf_counter()))
        async with gate:
            await stub.CancelBatch(scheduler_pb2.CancelBatchRequest(batch_id=batch_id), metadata=metadata, timeout=60)

    await asyncio.gather(*(one(i, b) for i, b in enumerate(batches)))
    return started


async def shown(page: Page) -> int:
    return int((await page.locator(".shown-count").inner_text()).split(" ")[0] or 0)


async def measure(page: Page, stub: Any, metadata: Metadata, batches: list[str], rate_per_s: float | None) -> Figures:
    """The scenario of the module docstring, on a signed-in page whose user holds the tasks of `batches`."""
    count = len(batches) * REPLICAS
    calls: list[str] = []
    page.on("request", lambda r: calls.append(r.url) if r.url.endswith("/ListTasks") else None)
    await page.reload()
    await page.wait_for_function("() => document.querySelectorAll('.tbody [role=row]').length > 0")
    first_rows_ms = float(await page.evaluate("() => performance.now()"))
    await page.wait_for_function(LIVE)

    all_loaded_ms = float(await page.evaluate(LOAD_ALL, count))
    list_calls = len(calls)
    render_ms = await page.evaluate(RENDER_ALL, count)
    if render_ms is None:
        raise RuntimeError("the filter did not show every task")
    await page.locator(".viewport").evaluate("(el) => { el.scrollTop = 0; }")

    await page.evaluate(RECORD_FRAMES)
    await page.evaluate(
        """() => { window.__rowsMax = 0; const body = document.querySelector('.tbody');
          new MutationObserver(() => { window.__rowsMax = Math.max(window.__rowsMax, body.children.length); })
            .observe(body, { childList: true }); }"""
    )
    started = await drive(stub, metadata, batches, rate_per_s)
    await page.wait_for_function(
        "(n) => document.querySelector('.card-value[data-metric=cancelled]').textContent === String(n)",
        arg=count,
        timeout=300_000,
    )
    elapsed = time.perf_counter() - started
    frames: list[float] = await page.evaluate("() => window.__stopFrames()")
    rows_max = int(
        await page.evaluate("() => Math.max(window.__rowsMax, document.querySelector('.tbody').children.length)")
    )
    return Figures(
        tasks=count,
        first_rows_ms=round(first_rows_ms, 1),
        all_loaded_ms=round(all_loaded_ms, 1),
        list_calls=list_calls,
        render_ms=[round(t, 1) for t in render_ms],
        changes=count,
        changes_s=round(elapsed, 2),
        changes_per_s=round(count / elapsed),
        frames=len(frames),
        frame_p50_ms=round(statistics.median(frames), 1),
        frame_p95_ms=round(percentile(frames, 0.95), 1),
        frame_max_ms=round(max(frames), 1),
        rows_in_dom_max=rows_max,
    )


def report(figures: Figures, rate: float | None) -> str:
    paced = f"paced at {rate:g} tasks/s" if rate else "as fast as the stack took them"
    return "\n".join(
        [
            f"tasks of one user                 {figures.tasks}",
            f"first rows painted (navigation)   {figures.first_rows_ms} ms",
            f"all {figures.tasks} loaded by scrolling   {figures.all_loaded_ms} ms "
            f"({figures.list_calls} ListTasks calls)",
            f"render of all {figures.tasks} (filter)  {', '.join(f'{t} ms' for t in figures.render_ms)}",
            f"state changes ({paced})  {figures.changes} in {figures.changes_s} s = {figures.changes_per_s}/s",
            f"frame time while changing         p50 {figures.frame_p50_ms} ms, p95 {figures.frame_p95_ms} ms, "
            f"max {figures.frame_max_ms} ms over {figures.frames} frames",
            f"rows in the DOM at most           {figures.rows_in_dom_max}",
        ]
    )


async def run(args: argparse.Namespace) -> Figures:
    with tempfile.TemporaryDirectory(prefix="rtask-bench-") as folder:
        config = StackConfig(
            data_dir=Path(folder), edge_port=0, edge_tls_port=0, admin_port=0, workers=0, bcrypt_cost=4,
            limits=UserLimits.unlimited(),
        )  # fmt: skip
        with Stack(config) as stack:
            email, password = f"scale-{uuid.uuid4().hex[:8]}@example.com", "bench password"
            async with grpc.aio.insecure_channel(stack.edge_address) as channel:
                reply = await auth_pb2_grpc.AuthServiceStub(channel).Signup(
                    auth_pb2.SignupRequest(email=email, password=password)
                )
                metadata: Metadata = (("authorization", f"Bearer {reply.access_token}"),)
                stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
                batches = await seed(stub, metadata, args.tasks)
                async with async_playwright() as playwright:
                    browser = await playwright.chromium.launch(
                        executable_path=CHROMIUM, chromium_sandbox=False, headless=True, args=CHROMIUM_ARGS
                    )
                    context = await browser.new_context(
                        base_url=f"http://127.0.0.1:{stack.edge_port}/", viewport={"width": 1440, "height": 1000}
                    )
                    page = await context.new_page()
                    await page.goto("/")
                    await page.get_by_label("Email").fill(email)
                    await page.get_by_label("Password").fill(password)
                    await page.get_by_role("button", name="Log in").click()
                    await page.wait_for_function(LIVE)
                    figures = await measure(page, stub, metadata, batches, args.rate)
                    await browser.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=10_000, help="tasks of the one user (a multiple of 50)")
    parser.add_argument("--rate", type=float, default=None, help="pace the changes at this many tasks per second")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    figures = asyncio.run(run(args))
    print(report(figures, args.rate))
    if args.json:
        args.json.write_text(json.dumps(asdict(figures), indent=2) + "\n")


if __name__ == "__main__":
    main()
