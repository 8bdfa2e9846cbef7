"""Delayed tasks on the full stack: SCHEDULED until run_at, started then and not before, cancelled for good,
refused with the field named; and, on a private scheduler, a burst of due tasks published once each by two
publishers at once.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest
import redis.asyncio as aioredis

from resilienttask.v1 import scheduler_pb2, task_pb2
from services.core import keys
from services.core.limits import UserLimits
from services.core.task_model import TERMINAL
from services.core.transitions import user as transitions
from services.scheduler.due import DuePublisher
from tests.conftest import Stores
from tests.helpers import eventually
from tests.integration.accounts import signup
from tests.integration.clock_handler import KIND as CLOCK
from tests.integration.private_scheduler import Isolated, isolated
from tests.integration.tasks import UserTasks, duration, timestamp
from tests.integration.watching import Watch

S = task_pb2
__all__ = ["isolated"]  # the fixture, imported for the burst test


@pytest.fixture
async def user(edge: grpc.aio.Channel) -> UserTasks:
    return UserTasks(edge, await signup(edge, "delayed"))


def soon(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


def started_s(task: task_pb2.Task) -> float:
    """The start the clock handler recorded itself."""
    return float(task.result.struct_value.fields["started_s"].number_value)


async def test_a_delayed_task_waits_scheduled_then_starts_at_its_time_and_not_before(user: UserTasks) -> None:
    run_at = soon(1.5)
    request_id = str(uuid.uuid4())
    (at_time,) = await user.submit(CLOCK, run_at=run_at, request_id=request_id)
    (after_delay,) = await user.submit(CLOCK, delay_s=1.0)
    assert at_time.status == S.TASK_STATUS_SCHEDULED and after_delay.status == S.TASK_STATUS_SCHEDULED
    assert at_time.run_at.ToDatetime(tzinfo=UTC) == run_at
    assert after_delay.run_at.ToDatetime(tzinfo=UTC) > after_delay.created_at.ToDatetime(tzinfo=UTC)
    # The same request again: the same task, still scheduled, nothing added.
    (again,) = await user.submit(CLOCK, run_at=run_at, request_id=request_id)
    assert again.id == at_time.id and again.status == S.TASK_STATUS_SCHEDULED
    for task in (at_time, after_delay):
        done = await user.wait_for(task.id, timeout_s=30)
        assert done.status == S.TASK_STATUS_SUCCEEDED and done.attempt == 1
        assert started_s(done) >= done.run_at.ToDatetime(tzinfo=UTC).timestamp(), "started before its run_at"
    history = await user.stub.ListTasks(
        scheduler_pb2.ListTasksRequest(status=S.TASK_STATUS_SCHEDULED), metadata=user.account.metadata
    )
    assert not history.tasks


async def test_a_run_at_just_past_is_an_immediate_task(user: UserTasks) -> None:
    (task,) = await user.submit(CLOCK, run_at=soon(-30))
    assert task.status == S.TASK_STATUS_QUEUED
    assert (await user.wait_for(task.id)).status == S.TASK_STATUS_SUCCEEDED


async def test_a_task_cancelled_while_scheduled_never_runs(user: UserTasks) -> None:
    run_at = soon(1.0)
    (cancelled,) = await user.submit(CLOCK, run_at=run_at)
    (later,) = await user.submit(CLOCK, run_at=run_at + timedelta(milliseconds=300))
    refused = await user.cancel(cancelled.id)
    assert refused.status == S.TASK_STATUS_CANCELLED and "scheduled" in refused.error
    # Once a task due after it has run, the publisher has gone past the cancelled one's time.
    assert (await user.wait_for(later.id)).status == S.TASK_STATUS_SUCCEEDED
    gone = await user.get(cancelled.id)
    assert gone.status == S.TASK_STATUS_CANCELLED and gone.attempt == 0 and not gone.HasField("started_at")
    assert not gone.HasField("result") and gone.version == cancelled.version + 1


async def test_scheduled_tasks_in_stats_lists_watch_events_delete_and_clear_history(
    user: UserTasks, edge: grpc.aio.Channel
) -> None:
    watch = Watch(edge, user.account)
    try:
        await watch.next(("snapshot",))
        (waiting,) = await user.submit(CLOCK, delay_s=3600)
        assert (await user.stats()).scheduled >= 1
        (soon_due,) = await user.submit(CLOCK, delay_s=0.5)
        listed = await user.stub.ListTasks(
            scheduler_pb2.ListTasksRequest(status=S.TASK_STATUS_SCHEDULED), metadata=user.account.metadata
        )
        assert waiting.id in {t.id for t in listed.tasks}

        def finished(events: list[scheduler_pb2.WatchTasksResponse]) -> bool:
            return any(e.event.task.id == soon_due.id and e.event.task.status in TERMINAL for e in events)

        events = await watch.events_until(finished)
        assert [e.event.task.status for e in events if e.event.task.id == waiting.id] == [S.TASK_STATUS_SCHEDULED]
        of_due = [e.event for e in events if e.event.task.id == soon_due.id]
        statuses = [e.task.status for e in of_due]
        # Every change announced, the due transition included, in order.
        assert statuses[:2] == [S.TASK_STATUS_SCHEDULED, S.TASK_STATUS_QUEUED], statuses
        assert statuses[-1] == S.TASK_STATUS_SUCCEEDED, statuses
        assert of_due[-1].stats.scheduled == 1 and of_due[-1].stats.active == 0 and of_due[-1].stats.succeeded == 1
        stats = await user.stats()
        assert (stats.scheduled, stats.active, stats.succeeded) == (1, 0, 1)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await user.stub.DeleteTask(
                scheduler_pb2.DeleteTaskRequest(task_id=waiting.id), metadata=user.account.metadata
            )
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        cleared = await user.stub.ClearHistory(scheduler_pb2.ClearHistoryRequest(), metadata=user.account.metadata)
        assert cleared.deleted == 1
        assert (await user.get(waiting.id)).status == S.TASK_STATUS_SCHEDULED
        await user.cancel(waiting.id)
    finally:
        watch.cancel()


async def test_retry_with_a_delay_is_scheduled_then_runs_after_it(user: UserTasks) -> None:
    (task,) = await user.submit(CLOCK, delay_s=3600)
    with pytest.raises(grpc.aio.AioRpcError) as not_finished:
        await user.retry(task.id)
    assert not_finished.value.code() == grpc.StatusCode.FAILED_PRECONDITION, "a SCHEDULED task is not retried"
    await user.cancel(task.id)
    retried = await user.retry(task.id, delay_s=0.8)
    assert retried.status == S.TASK_STATUS_SCHEDULED and retried.HasField("run_at")
    done = await user.wait_for(task.id)
    assert done.status == S.TASK_STATUS_SUCCEEDED
    assert started_s(done) >= retried.run_at.ToDatetime(tzinfo=UTC).timestamp()
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await user.retry(task.id, delay_s=-1)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and bad.value.details().startswith("delay")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("run_at", timestamp(soon(-120))),
        ("run_at", timestamp(soon(367 * 86400))),
        ("delay", duration(-1)),
        ("delay", duration(367 * 86400)),
    ],
)
async def test_bad_start_times_name_the_field_and_store_nothing(user: UserTasks, field: str, value: object) -> None:
    request = scheduler_pb2.SubmitTaskRequest(name="bad", kind="sleep")
    getattr(request, field).CopyFrom(value)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await user.stub.SubmitTask(request, metadata=user.account.metadata)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith(field), refused.value.details()
    listed = await user.stub.ListTasks(scheduler_pb2.ListTasksRequest(), metadata=user.account.metadata)
    assert not listed.tasks


# -- the burst, on a private scheduler (no worker consumes its streams) plus a second publisher ------------------
BURST = 10_000
# Replicas per submission: the statement takes any number (the gateway allows 50 per call), so the burst is
# stored in a few statements, well before its second even on a loaded machine.
REPLICAS = 500


async def _schedule_burst(iso: Isolated, run_at: datetime) -> None:
    async def one() -> None:
        spec = transitions.Submission(
            name="burst",
            kind="sleep",
            payload={},
            workload_ms=0,
            max_runtime_ms=60_000,
            replicas=REPLICAS,
            max_attempts=1,
            request_id=str(uuid.uuid4()),
            start=transitions.Start(run_at=run_at),
        )
        await transitions.submit(iso.pool, iso.owner, spec, UserLimits.unlimited())

    await asyncio.gather(*(one() for _ in range(BURST // REPLICAS)))


@pytest.fixture
async def second_publisher(isolated: Isolated, stores: Stores) -> AsyncIterator[DuePublisher]:
    """Another scheduler's due publisher on the private database and Redis: its own pool and connections."""
    name = await isolated.pool.fetchval("SELECT current_database()")
    pool = await asyncpg.create_pool(stores.database_url.rsplit("/", 1)[0] + f"/{name}", min_size=1, max_size=3)
    assert pool is not None
    redis = aioredis.Redis.from_url(stores.redis_url.rsplit("/", 1)[0] + "/3")  # the private scheduler's
    publisher = DuePublisher(pool, redis, max_active_tasks=0)
    running = asyncio.create_task(publisher.run())
    try:
        yield publisher
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await pool.close()
        await redis.aclose()


async def test_ten_thousand_due_at_once_are_each_published_exactly_once_by_two_publishers(
    isolated: Isolated, second_publisher: DuePublisher
) -> None:
    run_at = soon(3).replace(microsecond=0) + timedelta(seconds=1)
    await _schedule_burst(isolated, run_at)
    scheduled = await isolated.pool.fetchval("SELECT count(*) FROM tasks WHERE status = $1", S.TASK_STATUS_SCHEDULED)
    assert scheduled == BURST, "the burst was stored SCHEDULED (the run_at was still ahead)"
    stream = keys.dispatch_stream("sleep")

    async def all_published() -> bool:
        return bool(await isolated.redis.xlen(stream) >= BURST)

    await eventually(all_published, timeout_s=60, interval_s=0.1, message="10,000 dispatch entries")
    entries = await isolated.redis.xrange(stream)
    task_ids = [fields[keys.FIELD_TASK_ID.encode()].decode() for _, fields in entries]
    assert len(task_ids) == BURST and len(set(task_ids)) == BURST, "a due task was published twice"
    first_ms = min(int(entry_id.split(b"-")[0]) for entry_id, _ in entries)
    assert first_ms >= run_at.timestamp() * 1000, "published before due"
    rows = await isolated.pool.fetch("SELECT status, count(*) AS n FROM tasks GROUP BY status")
    assert {r["status"]: r["n"] for r in rows} == {S.TASK_STATUS_QUEUED: BURST}
    history = await isolated.pool.fetchval(
        "SELECT count(*) FROM task_history WHERE from_status = $1 AND to_status = $2",
        S.TASK_STATUS_SCHEDULED,
        S.TASK_STATUS_QUEUED,
    )
    assert history == BURST
