"""The scheduler's side of the lifecycle, driven by a real gRPC client acting as two workers.

An isolated scheduler (own database, own Redis database) so no live worker competes for the entries.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import grpc
import pytest
import redis.asyncio as aioredis

from resilienttask.v1 import task_pb2, worker_pb2, worker_pb2_grpc
from services.core import keys, outbox, task_store
from services.core.config import AuthConfig, DatabaseConfig, RedisConfig, ServerConfig
from services.core.dispatch import ensure_dispatch_groups, split_ref
from services.core.tokens import mint_worker_token
from services.core.transitions import user as transitions
from services.scheduler.app import SchedulerConfig, create_server
from services.scheduler.store import RetryPolicy
from services.scheduler.sweepers import SweepConfig
from tests.conftest import Stores
from tests.helpers import eventually

SECRET = secrets.token_bytes(32)


@dataclass
class Isolated:
    stub: worker_pb2_grpc.WorkerServiceStub
    pool: asyncpg.Pool
    redis: aioredis.Redis
    owner: str


def metadata(worker_id: str) -> tuple[tuple[str, str]]:
    token = mint_worker_token(AuthConfig(jwt_secret=SECRET), worker_id).token
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture
async def isolated(stores: Stores) -> AsyncIterator[Isolated]:
    name = f"sched_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(stores.database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    db_url = stores.database_url.rsplit("/", 1)[0] + f"/{name}"
    redis_url = stores.redis_url.rsplit("/", 1)[0] + "/3"
    redis = aioredis.Redis.from_url(redis_url)
    await redis.flushdb()
    config = SchedulerConfig(
        server=ServerConfig(port=0, shutdown_grace_s=0.5),
        database=DatabaseConfig(url=db_url, pool_min_size=1),
        redis=RedisConfig(url=redis_url),
        auth=AuthConfig(jwt_secret=SECRET),
        retry=RetryPolicy(base_ms=50, max_ms=100),
        sweeps=SweepConfig(publish_interval_ms=50),
        progress_flush_ms=20,
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
            yield Isolated(worker_pb2_grpc.WorkerServiceStub(channel), pool, redis, owner)
    finally:
        await service.stop(0.5)
        await pool.close()
        await redis.flushdb()
        await redis.aclose()


async def submit(iso: Isolated, *, replicas: int = 1, max_attempts: int = 3) -> list[asyncpg.Record]:
    spec = transitions.Submission(
        name="t",
        kind="sleep",
        payload={},
        workload_ms=10,
        max_runtime_ms=60_000,
        replicas=replicas,
        max_attempts=max_attempts,
        request_id=str(uuid.uuid4()),
    )
    rows, _ = await transitions.submit(iso.pool, iso.owner, spec)
    await outbox.dispatch_rows(iso.pool, iso.redis, rows)
    return [await task_store.get(iso.pool, iso.owner, str(r["id"])) for r in rows]  # type: ignore[misc]


def item(row: asyncpg.Record, entry_id: str | None = None) -> worker_pb2.StartItem:
    return worker_pb2.StartItem(
        task_id=str(row["id"]), dispatch_id=str(row["dispatch_id"]), entry_id=entry_id or row["entry_id"]
    )


async def start(iso: Isolated, worker: str, *items: worker_pb2.StartItem) -> list[worker_pb2.StartResult]:
    reply = await iso.stub.StartTasks(
        worker_pb2.StartTasksRequest(worker_id=worker, items=items), metadata=metadata(worker)
    )
    return list(reply.results)


async def finish(
    iso: Isolated, worker: str, task_id: str, fence: int, outcome: int, error: str = ""
) -> worker_pb2.FinishResult:
    held = worker_pb2.HeldTask(task_id=task_id, fence=fence)
    reply = await iso.stub.FinishTasks(
        worker_pb2.FinishTasksRequest(
            worker_id=worker, items=[worker_pb2.FinishItem(task=held, outcome=outcome, error=error)]
        ),
        metadata=metadata(worker),
    )
    return reply.results[0]


async def test_reclaimed_entry_takes_over_and_stale_reports_are_refused(isolated: Isolated) -> None:
    (row,) = await submit(isolated)
    (first,) = await start(isolated, "worker-a", item(row))
    assert first.decision == worker_pb2.START_DECISION_RUN and first.task.attempt == 1
    # The same entry, reclaimed by another worker after worker-a went silent: a new attempt, a new fence.
    (second,) = await start(isolated, "worker-b", item(row))
    assert second.decision == worker_pb2.START_DECISION_RUN
    assert second.task.attempt == 2 and second.fence > first.fence and second.task.worker_id == "worker-b"
    stale = await finish(isolated, "worker-a", str(row["id"]), first.fence, worker_pb2.OUTCOME_SUCCEEDED)
    assert not stale.accepted and stale.reason == "superseded"
    fresh = await finish(isolated, "worker-b", str(row["id"]), second.fence, worker_pb2.OUTCOME_SUCCEEDED)
    assert fresh.accepted
    done = await task_store.get(isolated.pool, isolated.owner, str(row["id"]))
    assert done is not None and done["status"] == task_pb2.TASK_STATUS_SUCCEEDED and done["attempt"] == 2
    history = await isolated.pool.fetch(
        "SELECT to_status, fence, detail FROM task_history WHERE task_id = $1 ORDER BY version", row["id"]
    )
    assert [h["to_status"] for h in history] == [1, 2, 2, 4]
    assert "reclaimed from worker-a" in history[2]["detail"]


async def test_duplicate_entries_and_stale_dispatches_are_skipped(isolated: Isolated) -> None:
    (row,) = await submit(isolated)
    (run,) = await start(isolated, "worker-a", item(row))
    assert run.decision == worker_pb2.START_DECISION_RUN
    (dup,) = await start(isolated, "worker-b", item(row, entry_id="sleep:1-1"))
    assert dup.decision == worker_pb2.START_DECISION_SKIP and dup.reason == "duplicate entry"
    stale = worker_pb2.StartItem(task_id=str(row["id"]), dispatch_id=str(uuid.uuid4()), entry_id=row["entry_id"])
    (old,) = await start(isolated, "worker-b", stale)
    assert old.decision == worker_pb2.START_DECISION_SKIP and old.reason == "stale dispatch"
    (again,) = await start(isolated, "worker-a", item(row))
    assert again.decision == worker_pb2.START_DECISION_RUN, "a lost start reply is answered again"
    assert again.fence == run.fence and again.task.attempt == 1
    (twin,) = await start(isolated, "worker-a", item(row, entry_id="sleep:2-2"))
    assert twin.decision == worker_pb2.START_DECISION_SKIP and twin.reason == "duplicate entry"
    (missing,) = await start(
        isolated, "worker-a", worker_pb2.StartItem(task_id="nope", dispatch_id="x", entry_id="1-0")
    )
    assert missing.decision == worker_pb2.START_DECISION_SKIP


async def test_cancelled_before_start_is_skipped(isolated: Isolated) -> None:
    (row,) = await submit(isolated)
    await transitions.cancel(isolated.pool, isolated.owner, task_id=str(row["id"]))
    (result,) = await start(isolated, "worker-a", item(row))
    assert result.decision == worker_pb2.START_DECISION_SKIP and result.reason == "already finished"


async def test_failed_attempts_retry_with_backoff_then_dead_letter(isolated: Isolated) -> None:
    (row,) = await submit(isolated, max_attempts=2)
    task_id = str(row["id"])
    (run,) = await start(isolated, "worker-a", item(row))
    assert (await finish(isolated, "worker-a", task_id, run.fence, worker_pb2.OUTCOME_FAILED, "boom")).accepted
    queued = await task_store.get(isolated.pool, isolated.owner, task_id)
    assert queued is not None and queued["status"] == task_pb2.TASK_STATUS_QUEUED and queued["error"] == "boom"
    assert queued["dispatch_id"] != row["dispatch_id"]

    async def republished() -> asyncpg.Record | None:
        return await isolated.pool.fetchrow("SELECT * FROM tasks WHERE id = $1 AND published", task_id)

    again = await eventually(republished, message="the sweeper publishes the retry after its backoff")
    stream, entry_id = split_ref(again["entry_id"])
    assert stream == keys.dispatch_stream("sleep")
    assert await isolated.redis.xrange(stream, min=entry_id, max=entry_id)
    (second,) = await start(isolated, "worker-a", item(again))
    assert second.task.attempt == 2
    await finish(isolated, "worker-a", task_id, second.fence, worker_pb2.OUTCOME_FAILED, "boom again")
    dead = await task_store.get(isolated.pool, isolated.owner, task_id)
    assert dead is not None and dead["status"] == task_pb2.TASK_STATUS_FAILED and dead["dead_lettered"]


async def test_tasks_committed_while_redis_was_down_are_published_by_the_sweeper(isolated: Isolated) -> None:
    spec = transitions.Submission(
        name="t",
        kind="sleep",
        payload={},
        workload_ms=0,
        max_runtime_ms=60_000,
        replicas=3,
        max_attempts=1,
        request_id=str(uuid.uuid4()),
    )
    rows, _ = await transitions.submit(isolated.pool, isolated.owner, spec)
    # Nobody published them (as if XADD had failed); make them due now instead of after the grace.
    await isolated.pool.execute(
        "UPDATE tasks SET publish_after = now() WHERE id = ANY($1::uuid[])", [r["id"] for r in rows]
    )

    async def all_published() -> bool:
        flags = await isolated.pool.fetch(
            "SELECT published FROM tasks WHERE id = ANY($1::uuid[])", [r["id"] for r in rows]
        )
        return all(f["published"] for f in flags)

    await eventually(all_published, message="sweeper publishes")
    entries = await isolated.redis.xrange(keys.dispatch_stream("sleep"))
    published = {fields[b"task_id"].decode() for _, fields in entries}
    assert {str(r["id"]) for r in rows} <= published


async def test_cancel_of_a_running_task_is_pushed_down_the_worker_stream(isolated: Isolated) -> None:
    (row,) = await submit(isolated)
    (run,) = await start(isolated, "worker-a", item(row))
    requests: asyncio.Queue[worker_pb2.ConnectRequest | None] = asyncio.Queue()
    await requests.put(worker_pb2.ConnectRequest(hello=worker_pb2.WorkerHello(worker_id="worker-a", slots=1)))

    async def outgoing() -> AsyncIterator[worker_pb2.ConnectRequest]:
        while (message := await requests.get()) is not None:
            yield message

    call = isolated.stub.Connect(outgoing(), metadata=metadata("worker-a"))
    held = worker_pb2.HeldTask(task_id=str(row["id"]), fence=run.fence)
    await requests.put(worker_pb2.ConnectRequest(heartbeat=worker_pb2.WorkerHeartbeat(tasks=[held])))
    await requests.put(worker_pb2.ConnectRequest(progress=worker_pb2.ProgressReport(task=held, progress=0.5)))

    async def progressed() -> bool:
        current = await task_store.get(isolated.pool, isolated.owner, str(row["id"]))
        return current is not None and current["progress"] == 0.5

    await eventually(progressed, message="progress recorded")
    result = await transitions.cancel(isolated.pool, isolated.owner, task_id=str(row["id"]))
    await outbox.push_stop(isolated.redis, result.to_stop, "cancelled")
    command = await asyncio.wait_for(call.read(), 10)
    assert command.cancel.task.task_id == str(row["id"]) and command.cancel.reason == "cancelled"
    assert command.cancel.task.fence == run.fence
    await finish(isolated, "worker-a", str(row["id"]), run.fence, worker_pb2.OUTCOME_CANCELLED, "stopped")
    done = await task_store.get(isolated.pool, isolated.owner, str(row["id"]))
    assert done is not None and done["status"] == task_pb2.TASK_STATUS_CANCELLED
    await requests.put(None)
    call.cancel()


async def test_cancelled_outcomes_are_fenced_and_recorded_with_history(isolated: Isolated) -> None:
    cancelling, running = await submit(isolated, replicas=2)
    runs = {r.task_id: r for r in await start(isolated, "worker-a", item(cancelling), item(running))}
    await transitions.cancel(isolated.pool, isolated.owner, task_id=str(cancelling["id"]))
    for row, before in ((cancelling, task_pb2.TASK_STATUS_CANCELLING), (running, task_pb2.TASK_STATUS_RUNNING)):
        task_id, fence = str(row["id"]), runs[str(row["id"])].fence
        stale = await finish(isolated, "worker-a", task_id, fence - 1, worker_pb2.OUTCOME_CANCELLED, "stopped")
        assert not stale.accepted and stale.reason == "superseded"
        assert (await finish(isolated, "worker-a", task_id, fence, worker_pb2.OUTCOME_CANCELLED, "stopped")).accepted
        again = await finish(isolated, "worker-a", task_id, fence, worker_pb2.OUTCOME_CANCELLED, "stopped")
        assert not again.accepted and again.reason == "already finished"
        done = await task_store.get(isolated.pool, isolated.owner, task_id)
        assert done is not None and done["status"] == task_pb2.TASK_STATUS_CANCELLED and done["error"] == "stopped"
        assert done["finished_at"] is not None and not done["dead_lettered"]
        last = await isolated.pool.fetchrow(
            "SELECT from_status, to_status, version, fence, detail FROM task_history WHERE task_id = $1 "
            "ORDER BY version DESC LIMIT 1",
            row["id"],
        )
        assert last is not None
        assert (last["from_status"], last["to_status"]) == (before, task_pb2.TASK_STATUS_CANCELLED)
        assert last["version"] == done["version"] and last["fence"] == fence and last["detail"] == "stopped"


async def test_worker_service_needs_a_worker_token(isolated: Isolated) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await isolated.stub.StartTasks(worker_pb2.StartTasksRequest(worker_id="w"))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
