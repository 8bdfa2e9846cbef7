"""A full Redis (maxmemory reached, policy noeviction) on a private Valkey and an in-process gateway with its own
database: the server refuses writes with OOM and evicts nothing; the user's calls still get their usual
answers, the tasks are committed and wait in PostgreSQL with their events, nothing reaches Redis half-written,
and all of it goes out once memory is available again (docs/operations.md, "Redis memory").
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import pytest
import redis.asyncio as aioredis
from redis.exceptions import OutOfMemoryError

from resilienttask.v1 import scheduler_pb2, task_pb2
from services.core import keys, outbox, redis_acl
from services.core.config import AuthConfig, DatabaseConfig, RedisConfig, ServerConfig
from services.gateway.app import GatewayConfig, create_gateway
from services.stack.embedded import MAXMEMORY_POLICY, valkey_process, wait_for_port
from services.stack.ports import free_port
from services.stack.redis_users import RedisAccess, logins, password_files, write_acl_file
from services.stack.stack import DEFAULT_REDIS_MAXMEMORY_MB
from tests.conftest import TEST_BCRYPT_COST, Stores
from tests.integration.accounts import signup
from tests.integration.tasks import UserTasks

S = task_pb2


@dataclass
class FullRedis:
    user: UserTasks
    admin: aioredis.Redis
    services: aioredis.Redis
    pool: asyncpg.Pool

    async def fill(self) -> None:
        """Set the limit below what the server already uses: every write that would grow memory is refused."""
        await self.admin.config_set("maxmemory", "1")

    async def relieve(self) -> None:
        await self.admin.config_set("maxmemory", "64mb")


@contextlib.asynccontextmanager
async def _private_gateway(stores: Stores, tmp_path: Path, partial: bool = False) -> AsyncIterator[FullRedis]:
    """A private Valkey with our users, its own database, and a gateway on them. partial: the gateway logs in
    as a user refused the dispatch streams, so its pipelines have one command refused and the others run."""
    port = free_port()
    files = password_files(tmp_path)
    valkey = valkey_process(
        tmp_path, port, log_dir=tmp_path, echo=None, acl_file=write_acl_file(tmp_path, files), maxmemory_mb=64
    )
    valkey.start()
    name = f"oom_{uuid.uuid4().hex[:10]}"
    pg = await asyncpg.connect(stores.database_url)
    await pg.execute(f'CREATE DATABASE "{name}"')
    db_url = stores.database_url.rsplit("/", 1)[0] + f"/{name}"
    try:
        wait_for_port(valkey, port)
        access: RedisAccess = logins(files, "127.0.0.1", port)
        assert access.admin is not None
        admin = aioredis.Redis.from_url(access.admin.url_with_password())
        url, password = access.services.url, files["services"].read_text().strip()
        if partial:
            events_only = dataclasses.replace(
                redis_acl.USERS[redis_acl.SERVICES],
                name="rtask-no-dispatch",
                key_patterns=(keys.OWNER_EVENTS_PATTERN, f"{keys.PREFIX}:feed:*", keys.WORKERS_HASH),
            )
            await admin.execute_command("ACL", "SETUSER", events_only.name, *events_only.rule(password).split()[2:])
            url = url.replace(redis_acl.USERS[redis_acl.SERVICES].name, events_only.name)
        config = GatewayConfig(
            server=ServerConfig(),
            database=DatabaseConfig(db_url, pool_min_size=1),
            redis=RedisConfig(url, password=password),
            auth=AuthConfig(jwt_secret=secrets.token_bytes(32), bcrypt_cost=TEST_BCRYPT_COST),
        )
        built = await create_gateway(config)
        await built.service.start(config.server)
        services = aioredis.Redis.from_url(access.services.url_with_password())
        pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
        assert pool is not None
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{built.service.port}") as channel:
                yield FullRedis(UserTasks(channel, await signup(channel, "oom")), admin, services, pool)
        finally:
            await pool.close()
            await admin.aclose()
            await services.aclose()
            await built.service.stop(0)
    finally:
        valkey.stop()
        await pg.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await pg.close()


@pytest.fixture
async def full_redis(stores: Stores, tmp_path: Path) -> AsyncIterator[FullRedis]:
    async with _private_gateway(stores, tmp_path) as running:
        yield running


async def test_a_full_redis_refuses_writes_and_evicts_nothing(full_redis: FullRedis) -> None:
    policy = await full_redis.admin.config_get("maxmemory-policy")
    assert policy == {"maxmemory-policy": MAXMEMORY_POLICY} or policy == {
        b"maxmemory-policy": MAXMEMORY_POLICY.encode()
    }
    stream = keys.dispatch_stream("sleep")
    kept = await full_redis.services.xadd(stream, {keys.FIELD_TASK_ID: "kept"})
    await full_redis.fill()
    with pytest.raises(OutOfMemoryError):
        await full_redis.services.xadd(stream, {keys.FIELD_TASK_ID: "refused"})
    assert [entry_id for entry_id, _ in await full_redis.services.xrange(stream)] == [kept], "nothing evicted"


async def test_with_redis_full_calls_answer_as_usual_and_the_work_waits_in_postgresql(full_redis: FullRedis) -> None:
    user, owner = full_redis.user, full_redis.user.account.user_id
    await full_redis.fill()
    tasks = await user.submit(workload_s=0.1, replicas=3)
    assert {t.status for t in tasks} == {S.TASK_STATUS_QUEUED}
    cancelled = (
        await user.stub.CancelTask(scheduler_pb2.CancelTaskRequest(task_id=tasks[0].id), metadata=user.account.metadata)
    ).task
    assert cancelled.status == S.TASK_STATUS_CANCELLED
    await user.stub.ListWorkers(scheduler_pb2.ListWorkersRequest(), metadata=user.account.metadata)
    # Nothing half-written in Redis: no dispatch entry, no event.
    assert not await full_redis.admin.exists(keys.dispatch_stream("sleep"), keys.owner_events_stream(owner))
    parked = await full_redis.pool.fetchval("SELECT count(*) FROM parked_events WHERE owner_id = $1", owner)
    assert parked == 4, "three submissions and one cancellation wait in PostgreSQL"
    assert not await full_redis.pool.fetchval("SELECT bool_or(published) FROM tasks WHERE owner_id = $1", owner)

    # Memory available again: what the scheduler's sweepers do publishes all of it, events in their order.
    await full_redis.relieve()
    assert await outbox.append_parked_events(full_redis.pool, full_redis.services) == 4
    events = await full_redis.admin.xrange(keys.owner_events_stream(owner))
    assert len(events) == 4
    queued = await full_redis.pool.fetch(
        "SELECT * FROM tasks WHERE owner_id = $1 AND status = $2", owner, S.TASK_STATUS_QUEUED
    )
    assert await outbox.dispatch_rows(full_redis.pool, full_redis.services, queued)
    assert await full_redis.admin.xlen(keys.dispatch_stream("sleep")) == 2


async def test_a_command_refused_in_a_pipeline_leaves_the_others_written_once(stores: Stores, tmp_path: Path) -> None:
    """The change events of a submission are written and the dispatch entry refused (as a full server refuses a
    write while the call before it went through): the events are in Redis once, not parked to be written
    again; the task waits for the sweeper to publish it."""
    async with _private_gateway(stores, tmp_path, partial=True) as half:
        owner = half.user.account.user_id
        (task,) = await half.user.submit(workload_s=0.1)
        assert task.status == S.TASK_STATUS_QUEUED
        assert await half.admin.xlen(keys.owner_events_stream(owner)) == 1
        assert await half.pool.fetchval("SELECT count(*) FROM parked_events") == 0, "written once, not parked"
        assert not await half.admin.exists(keys.dispatch_stream("sleep"))
        assert not await half.pool.fetchval("SELECT published FROM tasks WHERE id = $1", task.id)


async def test_the_session_valkey_runs_as_the_stack_runs_it_with_a_memory_limit(stores: Stores) -> None:
    admin = aioredis.Redis.from_url(stores.redis_url, decode_responses=True)
    try:
        config = await admin.config_get("maxmemory*")
    finally:
        await admin.aclose()
    assert int(config["maxmemory"]) == DEFAULT_REDIS_MAXMEMORY_MB * 1024 * 1024
    assert config["maxmemory-policy"] == MAXMEMORY_POLICY
