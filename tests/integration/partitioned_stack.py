"""A stack whose links go through loopback proxies a test can stall (tests/partition_proxy.py), and the checks the
partition tests share: the runs the task bodies recorded (tests/integration/partition_handler.py) and the tasks'
committed histories.

1 scheduler, 1 gateway, 2 workers and Envoy on the session's PostgreSQL (a database of its own) and Valkey (a
database number of its own); proxied: gateway <-> PostgreSQL, scheduler <-> PostgreSQL, and each worker's links
to the scheduler and to Redis. The timings (reclaim idle, heartbeats, outage grace, ...) are the caller's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from resilienttask import AsyncClient, Task, TaskStatus
from services.core.task_model import TERMINAL
from services.stack.stack import Stack, StackConfig
from tests.conftest import TEST_BCRYPT_COST, Stores
from tests.databases import create_database
from tests.helpers import eventually
from tests.integration.partition_handler import KIND, Run, overlap_s, runs
from tests.integration.test_user_limits import on_database
from tests.limits import OPEN_AUTH_LIMITS, OPEN_LOGIN_ENV
from tests.partition_proxy import Link, PartitionProxies

WORKERS = ("worker-1", "worker-2")
SERVING = health_pb2.HealthCheckResponse.SERVING


@dataclass
class Partitioned:
    """The running stack, its proxied links by name ("gateway-pg", "scheduler-pg", "worker-1-scheduler",
    "worker-1-redis", ...), its database and the folder the task bodies record their runs in."""

    stack: Stack
    proxies: PartitionProxies
    links: dict[str, Link]
    database_url: str
    runs_dir: Path

    def worker_links(self, worker: str, which: str) -> list[Link]:
        names = {"scheduler": ["scheduler"], "redis": ["redis"], "both": ["scheduler", "redis"]}[which]
        return [self.links[f"{worker}-{name}"] for name in names]


@contextlib.contextmanager
def partitioned_stack(
    stores: Stores, data_dir: Path, redis_db: int, timings: Mapping[str, str], echo: IO[str] | None
) -> Iterator[Partitioned]:
    """The stack, its proxies flowing; timings: the RTASK_* variables of the scenario (reclaim idle, ...)."""
    database_url = asyncio.run(create_database(stores.database_url, "partitions"))
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
            data_dir=data_dir,
            edge_port=0,
            edge_tls_port=0,
            admin_port=0,
            gateways=1,
            workers=0,
            worker_slots=4,
            database_url=database_url,
            redis_access=on_database(stores.redis_access, redis_db),
            bcrypt_cost=TEST_BCRYPT_COST,
            process_env={
                "gateway-1": {"DATABASE_URL": links["gateway-pg"].url(database_url)},
                "scheduler-1": {"DATABASE_URL": links["scheduler-pg"].url(database_url)},
            },
            extra_env={
                "RTASK_LOG_LEVEL": os.environ.get("RTASK_LOG_LEVEL", "INFO"),
                "RTASK_RETRY_BASE_MS": "100",
                "RTASK_WORKER_IMPORTS": "tests.integration.partition_handler",
                **timings,
                **OPEN_LOGIN_ENV,
            },
            auth_limits=OPEN_AUTH_LIMITS,
        )
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


async def submit(user: AsyncClient, partitioned: Partitioned, kind: str, workload_s: float) -> Task:
    (task,) = await user.submit(kind, kind=kind, payload={"dir": str(partitioned.runs_dir)}, workload=workload_s)
    return task


def runs_of(partitioned: Partitioned, task_id: str) -> list[Run]:
    """The runs of one task the bodies recorded, earliest first."""
    return sorted((r for r in runs(partitioned.runs_dir) if r.task_id == task_id), key=lambda r: r.start)


async def terminal_transitions(partitioned: Partitioned, task_ids: list[str]) -> dict[str, int]:
    """How many times each task entered a terminal state, by its committed history."""
    return await terminal_transitions_in(partitioned.database_url, task_ids)


async def terminal_transitions_in(database_url: str, task_ids: list[str]) -> dict[str, int]:
    """terminal_transitions() of the tasks in the database at database_url."""
    conn = await asyncpg.connect(database_url)
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


async def healthy(address: str, service: str = "") -> bool:
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=2
            )
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.status == SERVING)


async def ended_once(
    user: AsyncClient, partitioned: Partitioned, tasks: list[Task], status: TaskStatus = TaskStatus.SUCCEEDED
) -> None:
    """Every task reached `status`, and its history holds exactly one terminal transition."""
    done = await user.wait(tasks, timeout=120)
    assert all(t.status is status for t in done), [(t.id, t.status, t.error) for t in done]
    assert await terminal_transitions(partitioned, [t.id for t in tasks]) == {t.id: 1 for t in tasks}


async def value(of: object) -> object:
    """A plain value as a probe's awaitable (eventually() awaits its probe)."""
    return of


async def holder(user: AsyncClient, task_id: str) -> str | None:
    """The stack's name of the worker running the task ("worker-1"), from its id ("worker-1-a1b2c3")."""
    task = await user.get(task_id)
    return "-".join(task.worker_id.split("-")[:2]) if task.status is TaskStatus.RUNNING and task.worker_id else None


async def on_other_worker(user: AsyncClient, partitioned: Partitioned, busy: str, workload_s: float) -> Task:
    """A long task running on the worker other than `busy` (submitted until one lands there)."""
    for _ in range(20):
        task = await submit(user, partitioned, KIND, workload_s)
        where = await eventually(lambda task=task: holder(user, task.id), message="the task's worker is known")
        if where != busy:
            return task
        await user.cancel(task.id)
    raise AssertionError(f"no task landed on another worker than {busy}")


@dataclass(frozen=True)
class Takeover:
    """What a worker's partition did to its task, as the task bodies recorded it (epoch seconds)."""

    cut: str
    kind: str
    stalled_at: float
    first: Run
    second: Run

    def __str__(self) -> str:
        return (
            f"{self.cut} cut ({self.kind}): handler stopped {self.first.end - self.stalled_at:.2f} s after the "
            f"stall, attempt 2 started {self.second.start - self.stalled_at:.2f} s after it "
            f"({self.second.start - self.first.end:.2f} s apart)"
        )


async def cut_worker_off(
    user: AsyncClient,
    partitioned: Partitioned,
    cut: str,
    kind: str,
    workload_s: float,
    *,
    cancel: bool = False,
    takeover_timeout_s: float = 30,
) -> Takeover:
    """Stall the links (`cut`: "scheduler", "redis" or "both") of the worker running a task until another worker
    runs the task's next attempt, then heal them; check that the runs never overlapped, that a task of the
    healthy worker ran on undisturbed, and that both tasks ended exactly once (cancelled once taken over, when
    `cancel`: a long workload need not be waited out)."""
    task = await submit(user, partitioned, kind, workload_s)
    await eventually(lambda: value(runs_of(partitioned, task.id)), message="attempt 1 runs")
    busy = await eventually(lambda: holder(user, task.id), message="the task's worker is known")
    bystander = await on_other_worker(user, partitioned, busy, workload_s * 2)
    links = partitioned.worker_links(busy, cut)
    stalled_at = time.time()
    for link in links:
        link.stall()
    try:
        await eventually(
            lambda: value(len(runs_of(partitioned, task.id)) >= 2),
            timeout_s=takeover_timeout_s,
            message="attempt 2 elsewhere",
        )
    finally:
        for link in links:
            link.resume()
    if cancel:
        for each in (task, bystander):
            await user.cancel(each.id)
    await ended_once(user, partitioned, [task, bystander], TaskStatus.CANCELLED if cancel else TaskStatus.SUCCEEDED)
    found = runs_of(partitioned, task.id)
    first, second = found[0], found[1]
    assert (first.attempt, second.attempt) == (1, 2) and first.pid != second.pid, found
    assert overlap_s(found) == 0, f"attempt 1 ran until {first.end:.3f}, attempt 2 from {second.start:.3f}"
    assert len(runs_of(partitioned, bystander.id)) == 1, "the healthy worker's task ran once"
    address = partitioned.stack.address(busy)
    await eventually(lambda: healthy(address), timeout_s=60, message=f"{busy} back in contact")
    return Takeover(cut, kind, stalled_at, first, second)
