"""A private scheduler (own database, own Redis database) so no live worker competes for its entries,
and streams to it opened as a worker process opens them."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import asyncpg
import grpc
import pytest
import redis.asyncio as aioredis

from resilienttask.worker.v1 import worker_pb2, worker_pb2_grpc
from services.core import outbox, task_store
from services.core.config import DatabaseConfig, RedisConfig, ServerConfig
from services.core.dispatch import ensure_dispatch_groups
from services.core.limits import UserLimits
from services.core.tokens import mint_worker_token
from services.core.transitions import user as transitions
from services.core.worker_credentials import EnrolmentConfig, WorkerKeyConfig
from services.scheduler.app import SchedulerConfig, TakeoverConfig, create_server
from services.scheduler.store import RetryPolicy
from services.scheduler.sweepers import SweepConfig
from services.scheduler.worker_limits import WorkerLimits
from services.worker.connection import SchedulerLink, WorkerTokens
from tests.conftest import Stores
from tests.databases import create_database

# The worker key (schedulers only) and the enrolment secret (workers): never the user key.
ENROLMENT = EnrolmentConfig(secrets.token_hex(24).encode())
WORKER_KEYS = WorkerKeyConfig(jwt_secret=secrets.token_bytes(32), enrolment=ENROLMENT)
# A holder silent this long may lose its task to the worker that claimed its entry.
HOLDER_SILENT_MS = 1500
# ... once still seen silent this much later (the production default, two heartbeat intervals, is longer).
HOLDER_CONFIRM_MS = 300
PROGRESS_PER_SLOT_PER_S = 0.2


@dataclass
class Isolated:
    stub: worker_pb2_grpc.WorkerServiceStub
    pool: asyncpg.Pool
    redis: aioredis.Redis
    owner: str
    address: str
    links: dict[str, SchedulerLink] = field(default_factory=dict)
    runs: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    tokens: dict[str, WorkerTokens] = field(default_factory=dict)

    async def link(self, worker_id: str) -> SchedulerLink:
        """The worker's own stream to the scheduler (opened on first use), as a worker process holds it: it
        enrols with the enrolment secret (once per id and scheduler database), then connects with its token."""
        if worker_id not in self.links:
            hello = worker_pb2.WorkerHello(worker_id=worker_id, slots=10, kinds=["sleep"])
            tokens = self.tokens.setdefault(worker_id, WorkerTokens(ENROLMENT, worker_id))

            async def announce() -> None:
                await link.heartbeat([])

            link = SchedulerLink([self.address], tokens, hello, lambda _command: None, announce)
            self.links[worker_id] = link
            self.runs[worker_id] = asyncio.create_task(link.run())
        link = self.links[worker_id]
        await asyncio.wait_for(link.connected.wait(), 10)
        return link

    async def drop(self, worker_id: str) -> None:
        """Close the worker's stream, as a worker that dies does (its next link() opens a new one)."""
        link = self.links.pop(worker_id)
        await link.close()
        await asyncio.gather(self.runs.pop(worker_id), return_exceptions=True)

    async def close(self) -> None:
        for link in self.links.values():
            await link.close()
        await asyncio.gather(*self.runs.values(), return_exceptions=True)


def metadata(worker_id: str) -> tuple[tuple[str, str]]:
    """A worker token for worker_id, as a scheduler signs one at enrolment."""
    token = mint_worker_token(WORKER_KEYS, worker_id).token
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture
async def isolated(stores: Stores) -> AsyncIterator[Isolated]:
    db_url = await create_database(stores.database_url, "sched")
    redis_url = stores.redis_url.rsplit("/", 1)[0] + "/3"
    redis = aioredis.Redis.from_url(redis_url)
    await redis.flushdb()
    config = SchedulerConfig(
        server=ServerConfig(port=0, shutdown_grace_s=0.5),
        database=DatabaseConfig(url=db_url, pool_min_size=1),
        redis=RedisConfig(url=redis_url),
        workers=WORKER_KEYS,
        retry=RetryPolicy(base_ms=50, max_ms=100),
        sweeps=SweepConfig(publish_interval_ms=50),
        progress_flush_ms=20,
        takeover=TakeoverConfig(holder_silent_ms=HOLDER_SILENT_MS, holder_confirm_ms=HOLDER_CONFIRM_MS),
        # A low progress rate, so a test trips it with a few reports however slow the machine is.
        worker_limits=WorkerLimits(progress_per_slot_per_s=PROGRESS_PER_SLOT_PER_S),
        # One user's tasks, started by scripted workers that no registry counts: the slot cap off, so nothing is
        # held back (the cap itself is tested in test_user_limits*.py).
        limits=UserLimits.unlimited(),
    )
    service = await create_server(config)
    await service.start(config.server)
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=4)
    assert pool is not None
    owner = str(uuid.uuid4())
    await pool.execute("INSERT INTO users (id, email, password_hash) VALUES ($1, $2, 'x')", owner, f"{owner}@t.io")
    await ensure_dispatch_groups(redis, ["sleep"])
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            isolated = Isolated(
                worker_pb2_grpc.WorkerServiceStub(channel), pool, redis, owner, f"127.0.0.1:{service.port}"
            )
            try:
                yield isolated
            finally:
                await isolated.close()
    finally:
        await service.stop(0.5)
        await pool.close()
        await redis.flushdb()
        await redis.aclose()


async def submit(
    iso: Isolated, *, replicas: int = 1, max_attempts: int = 3, kind: str = "sleep", workload_ms: int = 10
) -> list[asyncpg.Record]:
    spec = transitions.Submission(
        name="t",
        kind=kind,
        payload={},
        workload_ms=workload_ms,
        max_runtime_ms=60_000,
        replicas=replicas,
        max_attempts=max_attempts,
        request_id=str(uuid.uuid4()),
    )
    rows, _ = await transitions.submit(iso.pool, iso.owner, spec)
    await outbox.dispatch_rows(iso.pool, iso.redis, rows)
    return [await task_store.get(iso.pool, iso.owner, str(r["id"])) for r in rows]  # type: ignore[misc]
