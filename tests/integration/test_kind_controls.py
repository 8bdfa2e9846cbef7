"""Concurrency keys, rate limits per kind, pausing a kind, and the operator role, on the full stack through Envoy.

The limits are checked against what the task bodies recorded themselves (tests/integration/gated_handler.py):
their own start and end times, never the task status alone.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

import resilienttask
from resilienttask import AsyncClient, Task, TaskStatus, WaitReason
from services.core.config import DatabaseConfig
from services.gateway import operators
from services.stack.stack import Stack
from tests.conftest import Stores, unique_email
from tests.helpers import eventually
from tests.integration.gated_handler import KEYS_KIND, PAUSE_KIND, RATE_KIND, runs

PASSWORD = "correct horse battery"


@pytest.fixture
async def user(stack: Stack) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(stack.edge_address) as sdk:
        await sdk.signup(unique_email("gated"), PASSWORD)
        yield sdk


@pytest.fixture
async def operator(stack: Stack, stores: Stores) -> AsyncIterator[AsyncClient]:
    """A user granted the operator role by the server-side command's own code."""
    async with AsyncClient(stack.edge_address) as sdk:
        session = await sdk.signup(unique_email("operator"), PASSWORD)
        assert await operators.change(DatabaseConfig(stores.database_url), session.user.email, True)
        yield sdk


async def _all(client: AsyncClient) -> list[Task]:
    return [task async for task in client.list()]


async def _submit(client: AsyncClient, kind: str, n: int, log: Path, sleep_s: float, **options: object) -> list[Task]:
    tasks: list[Task] = []
    while len(tasks) < n:
        replicas = min(50, n - len(tasks))
        payload = {"log": str(log), "sleep_s": sleep_s}
        tasks += await client.submit(kind, kind=kind, payload=payload, replicas=replicas, **options)  # type: ignore[arg-type]
    return tasks


# -- the operator role, and bad values --------------------------------------------------------------------------
async def test_operator_calls_need_the_operator_role_checked_on_every_call(
    user: AsyncClient, stores: Stores, stack: Stack
) -> None:
    calls: list[Callable[[], Awaitable[object]]] = [
        user.kind_controls,
        lambda: user.pause_kind("sleep"),
        lambda: user.resume_kind("sleep"),
        lambda: user.set_rate_limit("sleep", 5, 1),
        lambda: user.clear_rate_limit("sleep"),
    ]
    for call in calls:
        with pytest.raises(resilienttask.PermissionDenied, match="operator role"):
            await call()
    email = unique_email("granted")
    async with AsyncClient(stack.edge_address) as granted:
        await granted.signup(email, PASSWORD)
        database = DatabaseConfig(stores.database_url)
        assert await operators.change(database, email, True)
        kinds = {c.kind for c in await granted.kind_controls()}
        assert {"sleep", RATE_KIND} <= kinds, "every kind a worker serves is listed"
        assert await operators.change(database, email, False)
        with pytest.raises(resilienttask.PermissionDenied):
            await granted.kind_controls()
    assert not await operators.change(DatabaseConfig(stores.database_url), unique_email("nobody"), True)


async def test_bad_values_are_invalid_arguments_naming_the_field(operator: AsyncClient) -> None:
    cases: list[tuple[Callable[[], Awaitable[object]], str]] = [
        (lambda: operator.pause_kind(""), "kind"),
        (lambda: operator.resume_kind("x" * 65), "kind"),
        (lambda: operator.set_rate_limit("", 5, 1), "kind"),
        (lambda: operator.set_rate_limit("sleep", 0, 1), "rate_limit.starts"),
        (lambda: operator.set_rate_limit("sleep", 100_001, 1), "rate_limit.starts"),
        (lambda: operator.set_rate_limit("sleep", 5, 0.5), "rate_limit.period"),
        (lambda: operator.set_rate_limit("sleep", 5, 3601), "rate_limit.period"),
        (lambda: operator.clear_rate_limit(""), "kind"),
    ]
    for call, field in cases:
        with pytest.raises(resilienttask.InvalidArgument, match=f"INVALID_ARGUMENT: {re.escape(field)}: "):
            await call()
    control = next(c for c in await operator.kind_controls() if c.kind == "sleep")
    assert not control.paused and control.rate_limit is None, "nothing half-written"


# -- concurrency keys ------------------------------------------------------------------------------------------
def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, step in edges:  # at equal times an end sorts first (-1 < 1): touching runs do not overlap
        running += step
        peak = max(peak, running)
    return peak


async def test_a_concurrency_key_is_never_exceeded_while_workers_die(
    user: AsyncClient, stack: Stack, tmp_path: Path
) -> None:
    log, limit, n = tmp_path / "runs.log", 3, 200
    tasks = await _submit(user, KEYS_KIND, n, log, 0.1, concurrency_key="customer-7", concurrency_limit=limit)
    # Plain tasks of the same user beside them are not held back by the key.
    (plain,) = await user.submit("plain", workload=0)
    kills: list[float] = []
    for after in (30, 110):
        await eventually(lambda after=after: _count_starts(log, after), timeout_s=60, message=f"{after} runs")

        async def running_keyed() -> list[Task]:
            return [t for t in await _all(user) if t.status is TaskStatus.RUNNING and t.kind == KEYS_KIND]

        running = await eventually(running_keyed, message="a keyed task runs")
        victim = "-".join(running[0].worker_id.split("-")[:2])
        stack.processes[victim].kill()
        kills.append(time.time())
        stack.restart(victim)
    done = await user.wait([*tasks, plain], timeout=120)
    assert all(t.status is TaskStatus.SUCCEEDED for t in done), {t.status for t in done}
    assert {t.id for t in done} == {t.id for t in tasks} | {plain.id}
    assert max(t.attempt for t in done) >= 2, "a killed worker's task ran again elsewhere"
    recorded = runs(log)
    ends = {(task, attempt): at for what, task, attempt, at in recorded if what == "end"}
    intervals = []
    for what, task, attempt, at in recorded:
        if what == "start":
            # A run without an end was on a killed worker: it ran at most until the kill after its start.
            end = ends.get((task, attempt)) or min(k for k in kills if k >= at)
            intervals.append((at, end))
    assert {task for _, task, _, _ in recorded} == {t.id for t in tasks}
    assert _max_overlap(intervals) == limit, "the key's limit is reached, never exceeded"


async def _count_starts(log: Path, at_least: int) -> bool:
    return sum(1 for what, *_ in runs(log) if what == "start") >= at_least


# -- rate limits -----------------------------------------------------------------------------------------------
async def test_a_rate_limit_holds_across_the_pool(operator: AsyncClient, user: AsyncClient, tmp_path: Path) -> None:
    log, per_second, n = tmp_path / "runs.log", 10, 320  # 320 starts at 10/s: over 30 s
    control = await operator.set_rate_limit(RATE_KIND, per_second, 1)
    assert control.rate_limit is not None and control.rate_limit.starts == per_second
    try:
        tasks = await _submit(user, RATE_KIND, n, log, 0.0)

        async def some_wait() -> bool:
            return any(t.wait_reason is WaitReason.RATE_LIMIT for t in await _all(user))

        await eventually(some_wait, message="tasks wait for the rate limit")
        done = await user.wait(tasks, timeout=120)
    finally:
        await operator.clear_rate_limit(RATE_KIND)
    assert all(t.status is TaskStatus.SUCCEEDED for t in done)
    starts = sorted(at for what, _, _, at in runs(log) if what == "start")
    assert len(starts) == n
    assert starts[-1] - starts[0] >= (n / per_second) - 1 - 0.5
    busiest = max(sum(1 for s in starts[i:] if s < first + 1.0) for i, first in enumerate(starts))
    assert busiest == per_second, "some second used the whole limit, none more"
    assert len({t.worker_id for t in done}) >= 2, "one limit for the pool, not one per worker"


# -- pause and resume ------------------------------------------------------------------------------------------
async def test_no_task_of_a_paused_kind_starts_after_the_pause_returns(
    operator: AsyncClient, user: AsyncClient, tmp_path: Path
) -> None:
    log = tmp_path / "runs.log"
    submitted: list[Task] = []
    paused = asyncio.Event()
    after_pause = 0

    async def stream() -> None:
        nonlocal after_pause
        while after_pause < 10:
            submitted.extend(await _submit(user, PAUSE_KIND, 5, log, 0.05))
            after_pause += paused.is_set()

    submitting = asyncio.create_task(stream())
    try:
        await eventually(lambda: _count_starts(log, 10), message="tasks start before the pause")
        control = await operator.pause_kind(PAUSE_KIND)
        assert control.paused and control.paused_at is not None
        # Read after the pause returned: every start committed before it is here, and only those.
        started_before = {t.id for t in await _all(user) if t.started_at is not None}
        paused.set()
        await submitting
    finally:
        if not submitting.done():
            submitting.cancel()

    async def settled() -> bool:
        waiting = [t for t in await _all(user) if t.id not in started_before]
        return bool(waiting) and all(
            t.status is TaskStatus.QUEUED and t.wait_reason is WaitReason.KIND_PAUSED for t in waiting
        )

    await eventually(settled, timeout_s=30, message="every task not started before the pause waits for it")
    assert {task for what, task, _, _ in runs(log) if what == "start"} <= started_before
    held = len(submitted) - len(started_before)
    listed = next(c for c in await operator.kind_controls() if c.kind == PAUSE_KIND)
    assert listed.paused and listed.waiting == held
    resumed = await operator.resume_kind(PAUSE_KIND)
    assert not resumed.paused
    done = await user.wait(submitted, timeout=60)
    assert all(t.status is TaskStatus.SUCCEEDED for t in done)
    assert {task for what, task, _, _ in runs(log) if what == "end"} == {t.id for t in submitted}


async def test_a_kind_paused_before_any_task_holds_them_all(
    operator: AsyncClient, user: AsyncClient, tmp_path: Path
) -> None:
    kind = PAUSE_KIND
    await operator.pause_kind(kind)
    try:
        tasks = await _submit(user, kind, 5, tmp_path / "runs.log", 0.0)

        async def all_held() -> bool:
            return all(t.wait_reason is WaitReason.KIND_PAUSED for t in await _all(user))

        await eventually(all_held, message="tasks of a paused kind wait")
    finally:
        await operator.resume_kind(kind)
    done = await user.wait(tasks, timeout=60)
    assert all(t.status is TaskStatus.SUCCEEDED for t in done)
