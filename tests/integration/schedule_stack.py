"""A private stack for the schedule tests, with two schedulers, and helpers to read what schedules fired.

Private (its own PostgreSQL and Valkey): the tests stop, kill and restart its schedulers, which must not
disturb the session's stack, and every firer must be one of the processes a test controls.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest

from resilienttask.v1 import schedule_pb2, schedule_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc
from services.core.limits import UserLimits
from services.stack.stack import Stack, StackConfig
from tests.conftest import TEST_BCRYPT_COST
from tests.helpers import eventually
from tests.integration.accounts import Account, signup
from tests.limits import OPEN_AUTH_LIMITS, OPEN_LOGIN_ENV

MAX_SCHEDULES = 6
# Slots older than this when fired were missed (what the schedulers of this stack are told).
MISFIRE_GRACE_MS = 1000
SCHEDULERS = ("scheduler-1", "scheduler-2")


@pytest.fixture(scope="session")
def schedule_stack(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Stack]:
    config = StackConfig(
        data_dir=tmp_path_factory.mktemp("schedules"),
        edge_port=0,
        edge_tls_port=0,
        admin_port=0,
        schedulers=len(SCHEDULERS),
        gateways=1,
        workers=1,
        bcrypt_cost=TEST_BCRYPT_COST,
        # One user's tasks may fill the pool (the slot cap has tests of its own); few schedules per user, so the
        # limit is reached by a test.
        limits=UserLimits(max_schedules=MAX_SCHEDULES, slot_share=1.0, submit_burst=5_000),
        extra_env={
            "RTASK_LOG_LEVEL": os.environ.get("RTASK_LOG_LEVEL", "INFO"),
            "RTASK_SCHEDULE_MISFIRE_GRACE_MS": str(MISFIRE_GRACE_MS),
            "RTASK_WORKER_HEARTBEAT_MS": "500",
            **OPEN_LOGIN_ENV,
        },
        auth_limits=OPEN_AUTH_LIMITS,
        dashboard_dir=None,
    )
    echo = sys.stderr if request.config.getoption("--keep-logs") else None
    with Stack(config, echo=echo) as running:
        yield running


@dataclass
class User:
    """One user of the schedule stack: stubs through Envoy with the user's token, and a database connection to
    read what was fired."""

    account: Account
    schedules: schedule_pb2_grpc.ScheduleServiceStub
    tasks: scheduler_pb2_grpc.SchedulerServiceStub
    db: asyncpg.Connection

    @property
    def md(self) -> tuple[tuple[str, str], ...]:
        return self.account.metadata

    async def create(self, spec: schedule_pb2.ScheduleSpec, **fields: object) -> schedule_pb2.Schedule:
        reply = await self.schedules.CreateSchedule(
            schedule_pb2.CreateScheduleRequest(spec=spec, **fields),  # type: ignore[arg-type]
            metadata=self.md,
        )
        return reply.schedule

    async def get(self, schedule_id: str) -> schedule_pb2.Schedule:
        reply = await self.schedules.GetSchedule(
            schedule_pb2.GetScheduleRequest(schedule_id=schedule_id), metadata=self.md
        )
        return reply.schedule

    async def fired(self, schedule_id: str) -> list[asyncpg.Record]:
        """The schedule's tasks, oldest first, each with the slot its request_id names (None for a trigger) and
        how late after that slot it was inserted."""
        rows = await self.db.fetch(
            "SELECT id, name, status, request_id, batch_id, replica_index, created_at, started_at, finished_at "
            "FROM tasks WHERE schedule_id = $1 ORDER BY created_at, replica_index",
            schedule_id,
        )
        return list(rows)


def slot_of(task: asyncpg.Record) -> datetime | None:
    """The slot a firing's request_id names (schedule:<id>:<epoch ms>); None for a trigger."""
    last = task["request_id"].rsplit(":", 1)[-1]
    if not last.isdigit():
        return None
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=int(last))


def lateness_s(task: asyncpg.Record) -> float:
    slot = slot_of(task)
    assert slot is not None
    return float((task["created_at"] - slot).total_seconds())


@pytest.fixture
async def edge_channel(schedule_stack: Stack) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(schedule_stack.edge_address) as channel:
        yield channel


async def new_user(channel: grpc.aio.Channel, db: asyncpg.Connection) -> User:
    account = await signup(channel, "sched")
    return User(
        account,
        schedule_pb2_grpc.ScheduleServiceStub(channel),
        scheduler_pb2_grpc.SchedulerServiceStub(channel),
        db,
    )


@pytest.fixture
async def db(schedule_stack: Stack) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(schedule_stack.database_url)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def user(edge_channel: grpc.aio.Channel, db: asyncpg.Connection) -> AsyncIterator[User]:
    """A fresh user; at the end its schedules are deleted and its active tasks cancelled, so nothing of one test
    keeps the pool busy for the next."""
    made = await new_user(edge_channel, db)
    yield made
    await tidy(made)


async def tidy(user: User) -> None:
    await user.db.execute("DELETE FROM schedules WHERE owner_id = $1", user.account.user_id)
    batches = await user.db.fetch(
        "SELECT DISTINCT batch_id FROM tasks WHERE owner_id = $1 AND status IN (1, 2)", user.account.user_id
    )
    for row in batches:
        await user.tasks.CancelBatch(scheduler_pb2.CancelBatchRequest(batch_id=str(row["batch_id"])), metadata=user.md)


def every(
    seconds: float,
    *,
    name: str = "every",
    overlap: int = schedule_pb2.OVERLAP_POLICY_ALLOW,
    catchup: int = schedule_pb2.CATCHUP_POLICY_LATEST,
    catchup_limit: int = 0,
    workload_ms: int = 0,
    task_name: str = "tick",
) -> schedule_pb2.ScheduleSpec:
    spec = schedule_pb2.ScheduleSpec(
        name=name,
        task=schedule_pb2.TaskTemplate(name=task_name),
        overlap=overlap,  # type: ignore[arg-type]
        catchup=catchup,  # type: ignore[arg-type]
        catchup_limit=catchup_limit,
    )
    spec.interval.FromMilliseconds(int(seconds * 1000))
    spec.task.workload.FromMilliseconds(workload_ms)
    return spec


async def wait_past(db: asyncpg.Connection, moment: datetime, timeout_s: float = 30.0) -> None:
    """Until the database's clock has passed `moment`: how a test lets slots go by with nobody firing them."""

    async def passed() -> bool:
        return bool(await db.fetchval("SELECT clock_timestamp() > $1", moment))

    await eventually(passed, timeout_s=timeout_s, interval_s=0.05, message=f"time past {moment}")


async def restart_schedulers(stack: Stack, names: tuple[str, ...] = SCHEDULERS) -> None:
    """Start the stopped schedulers again, all at once (each start blocks until it serves)."""
    await asyncio.gather(*(asyncio.to_thread(stack.restart, name) for name in names))


async def stop_schedulers(stack: Stack, names: tuple[str, ...] = SCHEDULERS) -> None:
    await asyncio.gather(*(asyncio.to_thread(stack.processes[name].stop, 10) for name in names))
