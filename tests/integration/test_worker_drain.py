"""Draining a worker, on the full stack through Envoy: as an operator's call (DrainWorker) and on SIGTERM.

A drained worker starts nothing once the call returns, lets what it runs finish within the grace, and hands
back the rest (queued again at once, the attempt not counted); every task still ends exactly once. Checked
against the recorded history (every start, with its worker, and every end), not the status alone.
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import asyncpg
import pytest

import resilienttask
from resilienttask import AsyncClient, Snapshot, Task, TaskStatus
from resilienttask.v1 import task_pb2
from services.core.config import DatabaseConfig
from services.core.server import LIVENESS_SERVICE
from services.deploy import healthcheck
from services.gateway import operators
from services.stack.stack import Stack
from tests.conftest import Stores, unique_email
from tests.helpers import eventually
from tests.integration.test_worker_processes import process_for

PASSWORD = "correct horse battery"
TERMINAL = [task_pb2.TASK_STATUS_SUCCEEDED, task_pb2.TASK_STATUS_FAILED, task_pb2.TASK_STATUS_CANCELLED,
            task_pb2.TASK_STATUS_TIMED_OUT]  # fmt: skip


@pytest.fixture
async def operator(stack: Stack, stores: Stores) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(stack.edge_address) as sdk:
        session = await sdk.signup(unique_email("drainer"), PASSWORD)
        assert await operators.change(DatabaseConfig(stores.database_url), session.user.email, True)
        yield sdk


@pytest.fixture
async def db(stores: Stores) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(stores.database_url)
    try:
        yield conn
    finally:
        await conn.close()


async def _tasks(client: AsyncClient, ids: list[str]) -> list[Task]:
    return [await client.get(task_id) for task_id in ids]


async def _starts_on(db: asyncpg.Connection, worker_id: str, after: datetime) -> int:
    """Attempts started on worker_id after the given database time."""
    return int(
        await db.fetchval(
            "SELECT count(*) FROM task_history WHERE worker_id = $1 AND to_status = $2 AND at > $3",
            worker_id,
            task_pb2.TASK_STATUS_RUNNING,
            after,
        )
    )


async def _ends(db: asyncpg.Connection, ids: list[str]) -> Counter[str]:
    """How many times each task reached an end state."""
    rows = await db.fetch(
        "SELECT task_id::text AS id FROM task_history WHERE task_id = ANY($1::uuid[]) AND to_status = ANY($2)",
        ids,
        TERMINAL,
    )
    return Counter(r["id"] for r in rows)


async def test_a_drained_worker_starts_nothing_finishes_what_it_can_and_hands_back_the_rest(
    operator: AsyncClient, stack: Stack, db: asyncpg.Connection
) -> None:
    # Long tasks first; a worker running some of them is drained once short ones fill its free slots too (more
    # short tasks than the pool has free slots, so every worker takes its share).
    long = await operator.submit("long", workload=600, replicas=12, max_attempts=1)
    long_ids = [t.id for t in long]

    async def all_running(ids: list[str]) -> list[Task] | None:
        tasks = await _tasks(operator, ids)
        return tasks if all(t.status == TaskStatus.RUNNING for t in tasks) else None

    on = {t.id: t.worker_id for t in await eventually(lambda: all_running(long_ids), message="long tasks running")}
    drained = Counter(on.values()).most_common()[-1][0]  # runs some, with the most slots free
    name = process_for(stack, drained)
    handed = [i for i in long_ids if on[i] == drained]
    short = await operator.submit("short", workload=3, replicas=20)
    short_ids = [t.id for t in short]

    async def short_on_drained() -> list[str]:
        return [
            t.id for t in await _tasks(operator, short_ids) if t.status == TaskStatus.RUNNING and t.worker_id == drained
        ]

    try:
        finishing = await eventually(short_on_drained, message="short tasks running on the worker to drain")
        worker = await operator.drain_worker(drained, grace=5)
        returned_at = await db.fetchval("SELECT now()")
        assert worker.id == drained and worker.draining and worker.drain_deadline is not None
        pool = {w.id: w for w in await operator.workers()}
        assert pool[drained].draining and not any(w.draining for i, w in pool.items() if i != drained)
        async with operator.watch() as events:  # the dashboard's view of the pool says so too
            snapshot = await anext(aiter(events))
            assert isinstance(snapshot, Snapshot)
            assert {w.id for w in snapshot.workers if w.draining} == {drained}

        # Nothing new on the drained worker once the call returned.
        later = await operator.submit("after", workload=0.05, replicas=20)
        done_later = await operator.wait(later, timeout=60)
        assert all(t.status == TaskStatus.SUCCEEDED and t.worker_id != drained for t in done_later)

        # What it ran finished there within the grace ...
        for task in await operator.wait(finishing, timeout=60):
            assert task.status == TaskStatus.SUCCEEDED and task.worker_id == drained and task.attempt == 1, task

        # ... and the rest came back: started again elsewhere, the attempt not counted (max_attempts=1).
        async def handed_back() -> list[Task] | None:
            tasks = await _tasks(operator, handed)
            return tasks if all(t.status == TaskStatus.RUNNING and t.worker_id != drained for t in tasks) else None

        for task in await eventually(handed_back, timeout_s=60, message="handed-back tasks running elsewhere"):
            assert task.attempt == 1, task

        async def idle() -> bool:
            worker = {w.id: w for w in await operator.workers()}[drained]
            return worker.draining and worker.busy == 0

        await eventually(idle, message="the drained worker idle, and still shown draining")
        assert await _starts_on(db, drained, returned_at) == 0, "a task started on the drained worker after the call"
        handbacks = await db.fetchval(
            "SELECT count(*) FROM task_history WHERE task_id = ANY($1::uuid[]) AND detail LIKE 'handed back%'",
            handed,
        )
        assert handbacks == len(handed)
    finally:
        for task_id in long_ids:
            await operator.cancel(task_id)
        stack.processes[name].stop()
        stack.restart(name)
    ended = await operator.wait(long_ids + short_ids, timeout=60)
    assert {t.status for t in ended if t.id in long_ids} == {TaskStatus.CANCELLED}
    assert {t.status for t in ended if t.id in short_ids} == {TaskStatus.SUCCEEDED}
    ends = await _ends(db, long_ids + short_ids + [t.id for t in later])
    assert set(ends.values()) == {1} and len(ends) == len(long_ids) + len(short_ids) + len(later), ends


async def test_draining_names_a_bad_or_unknown_worker_and_needs_the_operator_role(
    operator: AsyncClient, stack: Stack
) -> None:
    for bad in ("", "has space", "x" * 129):
        with pytest.raises(resilienttask.InvalidArgument, match="INVALID_ARGUMENT: worker_id: "):
            await operator.drain_worker(bad)
    # A worker drained and restarted by an earlier test stays listed, draining, until its heartbeat expires:
    # compare with what was draining before, and refuse to drain one that is not.
    before = await operator.workers()
    draining_before = {w.id for w in before if w.draining}
    some = next(w for w in before if not w.draining)
    for grace in (3601, 0.0005):
        with pytest.raises(resilienttask.InvalidArgument, match="INVALID_ARGUMENT: grace: "):
            await operator.drain_worker(some.id, grace=grace)
    with pytest.raises(resilienttask.NotFound, match=re.escape("worker_id: no live worker 'no-such-worker'")):
        await operator.drain_worker("no-such-worker")
    async with AsyncClient(stack.edge_address) as user:
        await user.signup(unique_email("notoperator"), PASSWORD)
        with pytest.raises(resilienttask.PermissionDenied, match="operator role"):
            await user.drain_worker(some.id)
    after = {w.id for w in await operator.workers() if w.draining}
    assert after <= draining_before and some.id not in after, "nothing half-written"


async def test_sigterm_hands_back_what_outlives_the_drain_grace(
    operator: AsyncClient, stack: Stack, db: asyncpg.Connection
) -> None:
    (task,) = await operator.submit("outlives", workload=600, max_attempts=1)

    async def running() -> Task | None:
        current = await operator.get(task.id)
        return current if current.status == TaskStatus.RUNNING else None

    first = await eventually(running, message="task running")
    name = process_for(stack, first.worker_id)
    process = stack.processes[name]
    try:
        process.signal(signal.SIGTERM)  # drains for RTASK_WORKER_DRAIN_GRACE_S (10 s), then hands back

        async def draining() -> bool:
            return any(w.id == first.worker_id and w.draining for w in await operator.workers())

        await eventually(draining, message="the pool shows the worker draining")

        async def elsewhere() -> Task | None:
            current = await operator.get(task.id)
            return current if current.status == TaskStatus.RUNNING and current.worker_id != first.worker_id else None

        again = await eventually(elsewhere, timeout_s=60, message="handed back and started elsewhere")
        assert again.attempt == 1, "a handback does not use up the attempt (max_attempts=1)"
        assert process.wait(30) == 0
    finally:
        stack.restart(name)
        await operator.cancel(task.id)
    (done,) = await operator.wait([task.id], timeout=30)
    assert done.status == TaskStatus.CANCELLED
    assert (await _ends(db, [task.id]))[task.id] == 1


async def test_the_prestop_command_drains_the_worker_and_returns_once_it_has(
    operator: AsyncClient, stack: Stack
) -> None:
    name = stack.names("worker")[0]
    process = stack.processes[name]
    worker_id = process.env["RTASK_WORKER_ID"]
    try:
        hook = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).with_name("rtask-worker-drain")),
            "--pid",
            str(process.pid),
            "--address",
            stack.address(name),
            "--timeout",
            "60",
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await hook.communicate()
        assert hook.returncode == 0 and b"drained" in out, out
        assert process.alive(), "drained, not stopped: the kubelet's SIGTERM comes after the hook"

        # The pool learns of the drain from the worker's next heartbeat, which may come after the hook returned.
        async def listed_draining() -> bool:
            return {w.id: w for w in await operator.workers()}[worker_id].draining

        await eventually(listed_draining, message="the worker listed as draining")
        later = await operator.submit("after-hook", workload=0.05, replicas=10)
        assert all(t.worker_id != worker_id for t in await operator.wait(later, timeout=60))
        process.signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 30) == 0
    finally:
        if process.alive():
            process.stop()
        stack.restart(name)


async def test_every_service_answers_the_probes_kubernetes_asks(stack: Stack) -> None:
    """Readiness asks about the server as a whole, liveness about the `liveness` service (deploy/kubernetes/)."""
    for name in (*stack.names("gateway"), *stack.names("scheduler"), *stack.names("worker")):
        for service in ("", LIVENESS_SERVICE):
            assert await asyncio.to_thread(healthcheck.check, stack.address(name), service) == "SERVING", (
                name,
                service,
            )
        assert await asyncio.to_thread(healthcheck.check, stack.address(name), "no.such.Service") == "NOT_FOUND"
