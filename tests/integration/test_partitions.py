"""Network partitions on the real stack: links that stall (both ends keep running, nothing is closed), then heal.

A stack of its own (1 scheduler, 1 gateway, 2 workers, Envoy), every link under test through a loopback proxy
(tests/partition_proxy.py): gateway <-> PostgreSQL, scheduler <-> PostgreSQL, and each worker's links to the
scheduler and to Redis. The task bodies record their own runs (tests/integration/partition_handler.py): the
runs of one task on different workers never overlap, whichever link stalls, and once the link heals every
task ends exactly once, in one terminal state (counted in its committed history).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from resilienttask import AsyncClient, Task, TaskStatus
from resilienttask.v1 import scheduler_pb2, scheduler_pb2_grpc
from services.core.task_model import TERMINAL
from services.stack.stack import Stack, StackConfig
from tests.conftest import TEST_BCRYPT_COST, Stores, unique_email
from tests.helpers import eventually
from tests.integration.partition_handler import KIND, STUBBORN_KIND, Run, overlap_s, runs
from tests.integration.test_user_limits import on_database
from tests.limits import OPEN_AUTH_LIMITS, OPEN_LOGIN_ENV
from tests.partition_proxy import Link, PartitionProxies

REDIS_DB = 14
WORKERS = ("worker-1", "worker-2")
# Production keeps 10 s / 1 s / 30 s / 500 ms; scaled down so a partition plays out in seconds. The fence
# margin is the default: max(30 % of 3 s, cancel grace + 500 ms) = 900 ms.
RECLAIM_IDLE_MS = 3000
HEARTBEAT_MS = 500
OUTAGE_GRACE_MS = 1500
CANCEL_GRACE_MS = 300
DB_COMMAND_TIMEOUT_MS = 2000
# Long enough that the first attempt still runs when its worker fences itself (about 4 s after the stall).
WORKLOAD_S = 7.0
PASSWORD = "correct horse battery"
SERVING = health_pb2.HealthCheckResponse.SERVING


@dataclass
class Partitioned:
    stack: Stack
    proxies: PartitionProxies
    links: dict[str, Link]
    database_url: str
    runs_dir: Path

    def worker_links(self, worker: str, which: str) -> list[Link]:
        names = {"scheduler": ["scheduler"], "redis": ["redis"], "both": ["scheduler", "redis"]}[which]
        return [self.links[f"{worker}-{name}"] for name in names]


@pytest.fixture(scope="module")
def partitioned(
    stores: Stores, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Partitioned]:
    name = f"partitions_{uuid.uuid4().hex[:10]}"
    database_url = stores.database_url.rsplit("/", 1)[0] + f"/{name}"

    async def create_database() -> None:
        admin = await asyncpg.connect(stores.database_url)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()

    asyncio.run(create_database())
    # Outside pytest's temp root (mode 0700): a handler in a child process runs as an unprivileged user.
    runs_dir = Path(tempfile.mkdtemp(prefix="rtask-partition-runs-"))
    runs_dir.chmod(0o777)
    with PartitionProxies() as proxies, contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, runs_dir, ignore_errors=True)
        links = {
            "gateway-pg": proxies.link_to_url("gateway-pg", database_url),
            "scheduler-pg": proxies.link_to_url("scheduler-pg", database_url),
        }
        config = StackConfig(
            data_dir=tmp_path_factory.mktemp("partition-stack"),
            edge_port=0,
            edge_tls_port=0,
            admin_port=0,
            gateways=1,
            workers=0,
            worker_slots=4,
            database_url=database_url,
            redis_access=on_database(stores.redis_access, REDIS_DB),
            bcrypt_cost=TEST_BCRYPT_COST,
            process_env={
                "gateway-1": {"DATABASE_URL": links["gateway-pg"].url(database_url)},
                "scheduler-1": {"DATABASE_URL": links["scheduler-pg"].url(database_url)},
            },
            extra_env={
                "RTASK_LOG_LEVEL": os.environ.get("RTASK_LOG_LEVEL", "INFO"),
                "RTASK_RETRY_BASE_MS": "100",
                "RTASK_WORKER_RECLAIM_IDLE_MS": str(RECLAIM_IDLE_MS),
                "RTASK_WORKER_HEARTBEAT_MS": str(HEARTBEAT_MS),
                "RTASK_WORKER_OUTAGE_GRACE_MS": str(OUTAGE_GRACE_MS),
                "RTASK_WORKER_CANCEL_GRACE_MS": str(CANCEL_GRACE_MS),
                "RTASK_DB_COMMAND_TIMEOUT_MS": str(DB_COMMAND_TIMEOUT_MS),
                "RTASK_DB_CONNECT_TIMEOUT_MS": str(DB_COMMAND_TIMEOUT_MS),
                "RTASK_WORKER_IMPORTS": "tests.integration.partition_handler",
                **OPEN_LOGIN_ENV,
            },
            auth_limits=OPEN_AUTH_LIMITS,
        )
        echo = sys.stderr if request.config.getoption("--keep-logs") else None
        with Stack(config, echo=echo) as stack:
            for worker in WORKERS:
                to_scheduler = proxies.link(f"{worker}-scheduler", "127.0.0.1", stack.ports["scheduler-1"])
                redis_url = stack.redis_env("worker")["REDIS_URL"]
                to_redis = proxies.link_to_url(f"{worker}-redis", redis_url)
                links |= {to_scheduler.name: to_scheduler, to_redis.name: to_redis}
                env = {"RTASK_SCHEDULER_ADDR": to_scheduler.address, "REDIS_URL": to_redis.url(redis_url)}
                stack.start_worker(worker, env)
            try:
                yield Partitioned(stack, proxies, links, database_url, runs_dir)
            finally:
                proxies.resume_all()  # the stack stops cleanly


@pytest.fixture
async def user(partitioned: Partitioned) -> AsyncIterator[AsyncClient]:
    partitioned.proxies.resume_all()  # whatever a failed test left stalled
    async with AsyncClient(partitioned.stack.edge_address) as sdk:
        await sdk.signup(unique_email("partition"), PASSWORD)
        yield sdk


async def _submit(user: AsyncClient, partitioned: Partitioned, kind: str, workload_s: float) -> Task:
    (task,) = await user.submit(kind, kind=kind, payload={"dir": str(partitioned.runs_dir)}, workload=workload_s)
    return task


def _runs_of(partitioned: Partitioned, task_id: str) -> list[Run]:
    return sorted((r for r in runs(partitioned.runs_dir) if r.task_id == task_id), key=lambda r: r.start)


async def _terminal_transitions(partitioned: Partitioned, task_ids: list[str]) -> dict[str, int]:
    """How many times each task entered a terminal state, by its committed history."""
    conn = await asyncpg.connect(partitioned.database_url)
    try:
        rows = await conn.fetch(
            "SELECT task_id::text AS id, count(*) AS n FROM task_history"
            " WHERE task_id = ANY($1::uuid[]) AND to_status = ANY($2::smallint[]) GROUP BY task_id",
            task_ids,
            sorted(int(s) for s in TERMINAL),
        )
    finally:
        await conn.close()
    return {task_id: 0 for task_id in task_ids} | {r["id"]: int(r["n"]) for r in rows}


async def _healthy(address: str, service: str = "") -> bool:
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=2
            )
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.status == SERVING)


async def _ended_once(user: AsyncClient, partitioned: Partitioned, tasks: list[Task], timeout_s: float = 60) -> None:
    done = await user.wait(tasks, timeout=timeout_s)
    assert all(t.status is TaskStatus.SUCCEEDED for t in done), [(t.id, t.status, t.error) for t in done]
    assert await _terminal_transitions(partitioned, [t.id for t in tasks]) == {t.id: 1 for t in tasks}


# -- a worker cut off ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cut", "kind"),
    [("scheduler", KIND), ("redis", KIND), ("both", KIND), ("both", STUBBORN_KIND)],
    ids=["worker-scheduler", "worker-redis", "worker-both", "worker-both-stubborn-handler"],
)
async def test_a_worker_cut_off_stops_its_handler_before_its_task_runs_elsewhere(
    user: AsyncClient, partitioned: Partitioned, cut: str, kind: str
) -> None:
    task = await _submit(user, partitioned, kind, WORKLOAD_S)
    await eventually(lambda: _async(_runs_of(partitioned, task.id)), message="attempt 1 runs")
    holder = await eventually(lambda: _holder(user, task.id), message="the task's worker is known")
    # A task on the healthy worker is not disturbed by the other's partition.
    bystander = await _on_other_worker(user, partitioned, holder)
    links = partitioned.worker_links(holder, cut)
    for link in links:
        link.stall()
    stalled_at = time.time()
    try:
        await eventually(
            lambda: _async(len(_runs_of(partitioned, task.id)) >= 2), timeout_s=30, message="attempt 2 elsewhere"
        )
    finally:
        for link in links:
            link.resume()
    await _ended_once(user, partitioned, [task, bystander])
    found = _runs_of(partitioned, task.id)
    first, second = found[0], found[1]
    assert (first.attempt, second.attempt) == (1, 2) and first.pid != second.pid, found
    assert overlap_s(found) == 0, f"attempt 1 ran until {first.end:.3f}, attempt 2 from {second.start:.3f}"
    assert len(_runs_of(partitioned, bystander.id)) == 1, "the healthy worker's task ran once"
    print(
        f"\n{cut} cut ({kind}): handler stopped {first.end - stalled_at:.2f} s after the stall, attempt 2 "
        f"started {second.start - stalled_at:.2f} s after it ({second.start - first.end:.2f} s apart)"
    )
    await eventually(lambda: _healthy(partitioned.stack.address(holder)), timeout_s=30, message="back in contact")


async def _async(value: object) -> object:
    return value


async def _holder(user: AsyncClient, task_id: str) -> str | None:
    """The stack's name of the worker running the task ("worker-1"), from its id ("worker-1-a1b2c3")."""
    task = await user.get(task_id)
    return "-".join(task.worker_id.split("-")[:2]) if task.status is TaskStatus.RUNNING and task.worker_id else None


async def _on_other_worker(user: AsyncClient, partitioned: Partitioned, busy: str) -> Task:
    """A long task running on the worker other than `busy` (submitted until one lands there)."""
    for _ in range(20):
        task = await _submit(user, partitioned, KIND, WORKLOAD_S * 2)
        holder = await eventually(lambda task=task: _holder(user, task.id), message="the task's worker is known")
        if holder != busy:
            return task
        await user.cancel(task.id)
    raise AssertionError(f"no task landed on another worker than {busy}")


# -- services cut off from PostgreSQL --------------------------------------------------------------------------
async def test_a_gateway_cut_off_from_postgresql_answers_unavailable_and_recovers(
    user: AsyncClient, partitioned: Partitioned
) -> None:
    running = await _submit(user, partitioned, KIND, 3.0)
    await eventually(lambda: _async(_runs_of(partitioned, running.id)), message="a task runs")
    link = partitioned.links["gateway-pg"]
    metadata = (("authorization", f"Bearer {user.token}"),)
    link.stall()
    try:
        for address in (partitioned.stack.address("gateway-1"), partitioned.stack.edge_address):
            async with grpc.aio.insecure_channel(address) as channel:
                stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
                calls = [
                    lambda stub=stub: stub.GetTask(
                        scheduler_pb2.GetTaskRequest(task_id=running.id), metadata=metadata, timeout=20
                    ),
                    lambda stub=stub: stub.SubmitTask(
                        scheduler_pb2.SubmitTaskRequest(name="x", kind="sleep", request_id=str(uuid.uuid4())),
                        metadata=metadata,
                        timeout=20,
                    ),
                ]
                for call in calls:
                    with pytest.raises(grpc.aio.AioRpcError) as raised:
                        await call()
                    # Bounded by the statement timeout (2 s here), far inside the client's 20 s deadline.
                    assert raised.value.code() is grpc.StatusCode.UNAVAILABLE, raised.value
        # Meanwhile the scheduler and the workers, which reach PostgreSQL, finish the running task.
        await eventually(
            lambda: _async(_done_running(partitioned, running.id)), timeout_s=30, message="the task body ended"
        )
    finally:
        link.resume()
    # Healed: the same calls succeed (through the edge), and new work runs.
    after = await eventually(lambda: _answers(user, running.id), timeout_s=30, message="the gateway answers again")
    assert after.status is TaskStatus.SUCCEEDED
    fresh = await _submit(user, partitioned, KIND, 0.1)
    await _ended_once(user, partitioned, [running, fresh])


def _done_running(partitioned: Partitioned, task_id: str) -> bool:
    found = _runs_of(partitioned, task_id)
    return bool(found) and found[-1].end < time.time() - 0.5


async def _answers(user: AsyncClient, task_id: str) -> Task | None:
    try:
        task = await user.get(task_id, timeout=5)
    except Exception:  # still recovering: UNAVAILABLE, retried
        return None
    return task if task.status in {TaskStatus.SUCCEEDED, TaskStatus.FAILED} else None


async def test_a_scheduler_cut_off_from_postgresql_holds_work_back_and_recovers(
    user: AsyncClient, partitioned: Partitioned
) -> None:
    running = await _submit(user, partitioned, KIND, 3.0)
    await eventually(lambda: _async(_runs_of(partitioned, running.id)), message="a task runs")
    link = partitioned.links["scheduler-pg"]
    scheduler = partitioned.stack.address("scheduler-1")
    link.stall()
    try:
        # Its readiness probe is bounded too: the scheduler says it cannot serve, it does not hang.
        await eventually(lambda: _not(_healthy(scheduler)), timeout_s=20, message="scheduler NOT_SERVING")
        # Submitted meanwhile (the gateway reaches PostgreSQL): dispatched, but no start can be recorded.
        waiting = await _submit(user, partitioned, KIND, 0.1)
        await eventually(
            lambda: _async(_done_running(partitioned, running.id)), timeout_s=30, message="the running body ended"
        )
        assert not _runs_of(partitioned, waiting.id), "no task starts while its start cannot be committed"
        assert (await user.get(running.id)).status is TaskStatus.RUNNING, "its outcome waits for the database"
    finally:
        link.resume()
    await eventually(lambda: _healthy(scheduler), timeout_s=30, message="scheduler SERVING again")
    await _ended_once(user, partitioned, [running, waiting])
    assert len(_runs_of(partitioned, running.id)) == 1 and len(_runs_of(partitioned, waiting.id)) == 1


async def _not(probe: object) -> bool:
    assert asyncio.iscoroutine(probe)
    return not await probe
