"""Per-user limits on the real stack, through Envoy: one user at each limit is refused with RESOURCE_EXHAUSTED
naming it, with nothing written; one user's long tasks hold only their share of the worker slots, so another
user's short task still starts; ClearHistory of many rows works in pages.

A stack of its own, with small limits (LIMITS below) on a database and a Redis database of its own, so its
schedulers' slot cap and its workers do not mix with the shared stack's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
from collections.abc import AsyncIterator, Iterator

import asyncpg
import grpc
import pytest

from resilienttask.v1 import scheduler_pb2, task_pb2
from services.core.limits import UserLimits
from services.stack.redis_users import RedisAccess, RedisLogin
from services.stack.stack import Stack, StackConfig
from tests.conftest import TEST_BCRYPT_COST, Stores
from tests.databases import create_database
from tests.helpers import eventually
from tests.integration.accounts import Account, signup
from tests.integration.tasks import UserTasks
from tests.integration.watching import Watch
from tests.limits import OPEN_AUTH_LIMITS, OPEN_LOGIN_ENV

S = task_pb2
WORKERS, SLOTS = 2, 2
SLOTS_PER_USER = 2  # half of the 4 live slots
MAX_ACTIVE, MAX_STORED, BURST, MAX_WATCHES = 8, 14, 15, 2
CLEAR_PAGE = 5  # so that clearing MAX_STORED tasks takes several pages
LIMITS = UserLimits(
    max_active_tasks=MAX_ACTIVE,
    max_stored_tasks=MAX_STORED,
    # Slow enough that the bucket does not refill a whole task while a test runs.
    submit_rate_per_s=0.05,
    submit_burst=BURST,
    max_watch_streams=MAX_WATCHES,
    slot_share=0.5,
    clear_history_page=CLEAR_PAGE,
)
LONG_S = 600.0
REDIS_DB = 9


def on_database(access: RedisAccess, db: int) -> RedisAccess:
    """The same logins, on another Redis database of the same server."""

    def moved(login: RedisLogin) -> RedisLogin:
        return dataclasses.replace(login, url=login.url.rsplit("/", 1)[0] + f"/{db}")

    return RedisAccess(moved(access.services), moved(access.worker), moved(access.admin) if access.admin else None)


@pytest.fixture(scope="module")
def limited_stack(
    stores: Stores, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Stack]:
    database_url = asyncio.run(create_database(stores.database_url, "limits"))
    config = StackConfig(
        data_dir=tmp_path_factory.mktemp("limited-stack"),
        edge_port=0,
        edge_tls_port=0,
        admin_port=0,
        workers=WORKERS,
        worker_slots=SLOTS,
        database_url=database_url,
        redis_access=on_database(stores.redis_access, REDIS_DB),
        bcrypt_cost=TEST_BCRYPT_COST,
        limits=LIMITS,
        extra_env={"RTASK_LOG_LEVEL": os.environ.get("RTASK_LOG_LEVEL", "INFO"), **OPEN_LOGIN_ENV},
        auth_limits=OPEN_AUTH_LIMITS,  # the whole session is one client address (tests/limits.py)
    )
    echo = sys.stderr if request.config.getoption("--keep-logs") else None
    with Stack(config, echo=echo) as running:
        yield running


@pytest.fixture
async def db(limited_stack: Stack) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(limited_stack.database_url)
    try:
        # The schedulers write the cap once they have seen the whole pool.
        async def cap_known() -> bool:
            return await conn.fetchval("SELECT slots_per_user FROM slot_cap") == SLOTS_PER_USER

        await eventually(cap_known, timeout_s=30, message="the slot cap of the live pool")
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def channel(limited_stack: Stack, db: asyncpg.Connection) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(limited_stack.edge_address) as edge:
        yield edge


async def new_user(channel: grpc.aio.Channel, prefix: str) -> UserTasks:
    return UserTasks(channel, await signup(channel, prefix))


async def stored(db: asyncpg.Connection, user: UserTasks) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM tasks WHERE owner_id = $1", user.account.user_id)
    return count


async def refused(user: UserTasks, *, replicas: int = 1, workload_s: float = 0) -> str:
    """Submit, expecting RESOURCE_EXHAUSTED; returns its message."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await user.submit(workload_s=workload_s, replicas=replicas)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, caught.value
    return caught.value.details() or ""


async def all_finished(user: UserTasks, tasks: list[task_pb2.Task]) -> list[task_pb2.Task]:
    return list(await asyncio.gather(*(user.wait_for(t.id, timeout_s=60) for t in tasks)))


async def statuses(user: UserTasks, tasks: list[task_pb2.Task]) -> list[int]:
    return [t.status for t in await asyncio.gather(*(user.get(t.id) for t in tasks))]


async def test_active_tasks_limit(channel: grpc.aio.Channel, db: asyncpg.Connection) -> None:
    user = await new_user(channel, "active")
    tasks = await user.submit(workload_s=LONG_S, replicas=MAX_ACTIVE)
    try:
        message = await refused(user)
        assert "active tasks" in message and str(MAX_ACTIVE) in message, message
        assert await stored(db, user) == MAX_ACTIVE, "nothing of the refused submission was written"
    finally:
        await user.cancel_batch(tasks[0].batch_id)


async def test_stored_tasks_limit_and_clear_history_frees_it(channel: grpc.aio.Channel, db: asyncpg.Connection) -> None:
    user = await new_user(channel, "stored")
    done = await all_finished(user, await user.submit(replicas=MAX_ACTIVE))
    done += await all_finished(user, await user.submit(replicas=MAX_STORED - MAX_ACTIVE))
    assert {t.status for t in done} == {S.TASK_STATUS_SUCCEEDED}
    message = await refused(user)
    assert "stored tasks" in message and str(MAX_STORED) in message, message
    assert await stored(db, user) == MAX_STORED, "nothing of the refused submission was written"
    watch = Watch(channel, user.account, accept_batches=True)
    try:
        await watch.next(("snapshot",))
        cleared = await user.stub.ClearHistory(scheduler_pb2.ClearHistoryRequest(), metadata=user.account.metadata)
        assert cleared.deleted == MAX_STORED, "every page was deleted"
        gone: set[str] = set()
        while len(gone) < MAX_STORED:
            message = await watch.next(("event", "events"))
            events = [message.event] if message.HasField("event") else list(message.events.events)
            gone |= {e.task.id for e in events if e.deleted}
        assert gone == {t.id for t in done}, "every page was announced"
    finally:
        watch.cancel()
    assert await stored(db, user) == 0
    await all_finished(user, await user.submit())


async def test_submission_rate_limit_counts_replicas(channel: grpc.aio.Channel, db: asyncpg.Connection) -> None:
    user = await new_user(channel, "rate")
    first = await user.submit(workload_s=LONG_S, replicas=MAX_ACTIVE)
    await user.cancel_batch(first[0].batch_id)
    await all_finished(user, first)
    await user.stub.ClearHistory(scheduler_pb2.ClearHistoryRequest(), metadata=user.account.metadata)
    second = await user.submit(workload_s=LONG_S, replicas=BURST - MAX_ACTIVE)
    try:
        message = await refused(user)
        assert "submission rate" in message and str(BURST) in message, message
        assert await stored(db, user) == BURST - MAX_ACTIVE, "nothing of the refused submission was written"
    finally:
        await user.cancel_batch(second[0].batch_id)


async def test_watch_streams_limit_holds_across_gateways(limited_stack: Stack, db: asyncpg.Connection) -> None:
    async with (
        grpc.aio.insecure_channel(limited_stack.address("gateway-1")) as one,
        grpc.aio.insecure_channel(limited_stack.address("gateway-2")) as two,
    ):
        account: Account = await signup(one, "watch")
        first, second = Watch(one, account), Watch(two, account)
        await first.next(("snapshot",))
        await second.next(("snapshot",))
        third = Watch(one, account)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await third.next(("snapshot",))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "watch streams" in (caught.value.details() or "")
        second.cancel()

        async def opens() -> Watch | None:
            watch = Watch(two, account)
            try:
                await watch.next(("snapshot",))
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                return None
            return watch

        again = await eventually(opens, message="a stream opens once another closed")
        again.cancel()
        first.cancel()


async def test_one_users_many_long_tasks_leave_slots_for_another_users_short_task(
    channel: grpc.aio.Channel, db: asyncpg.Connection
) -> None:
    """The issue's measured case: one user's long tasks outnumber the slots; another user's 0.1 s task starts."""
    heavy, light = await new_user(channel, "heavy"), await new_user(channel, "light")
    many = await heavy.submit(workload_s=LONG_S, replicas=MAX_ACTIVE)
    try:

        async def share_running() -> list[int] | None:
            now = await statuses(heavy, many)
            assert now.count(S.TASK_STATUS_RUNNING) <= SLOTS_PER_USER, now
            return now if now.count(S.TASK_STATUS_RUNNING) == SLOTS_PER_USER else None

        await eventually(share_running, message="the heavy user's share of the slots running")
        (short,) = await light.submit(workload_s=0.1)
        assert (await light.wait_for(short.id)).status == S.TASK_STATUS_SUCCEEDED
        now = await statuses(heavy, many)
        running = [t for t, status in zip(many, now, strict=True) if status == S.TASK_STATUS_RUNNING]
        assert len(running) == SLOTS_PER_USER, "the heavy user's long tasks still run"
        assert now.count(S.TASK_STATUS_QUEUED) == MAX_ACTIVE - SLOTS_PER_USER, now

        # Their tasks held back start as their running ones end.
        for task in running:
            await heavy.cancel(task.id)
        rest = [t for t in many if t not in running]

        async def next_ones_running() -> bool:
            return (await statuses(heavy, rest)).count(S.TASK_STATUS_RUNNING) == SLOTS_PER_USER

        await eventually(next_ones_running, message="the next held tasks started")
        # A held task is cancelled at once, like any queued one.
        queued = [
            t for t, status in zip(rest, await statuses(heavy, rest), strict=True) if status == S.TASK_STATUS_QUEUED
        ]
        cancelled = await heavy.cancel(queued[0].id)
        assert cancelled.status == S.TASK_STATUS_CANCELLED and "queued" in cancelled.error
    finally:
        await heavy.cancel_batch(many[0].batch_id)
    assert {t.status for t in await all_finished(heavy, many)} == {S.TASK_STATUS_CANCELLED}


async def test_a_bulk_retry_page_over_a_limit_is_refused_whole(
    channel: grpc.aio.Channel, db: asyncpg.Connection
) -> None:
    """RetryTasks admits a page as one submission of that many tasks: over a limit, nothing of it is written."""
    user = await new_user(channel, "bulk-limits")
    ids = [t.id for t in await user.submit(replicas=12, delay_s=3600)]  # 12 of the 15 tokens; not active
    md = user.account.metadata

    def request(action: str, listed: list[str]) -> object:
        selection = scheduler_pb2.TaskSelection(ids=scheduler_pb2.TaskIds(task_ids=listed))
        return getattr(scheduler_pb2, f"{action}TasksRequest")(selection=selection)

    async def refused_retry(listed: list[str]) -> str:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await user.stub.RetryTasks(request("Retry", listed), metadata=md)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        left = [await user.get(task_id) for task_id in ids[3:]]
        assert {t.status for t in left} == {S.TASK_STATUS_CANCELLED}, "nothing of the refused page was written"
        return caught.value.details() or ""

    cancelled = await user.stub.CancelTasks(request("Cancel", ids), metadata=md)
    assert (cancelled.affected, cancelled.skipped) == (12, 0)
    assert "active tasks" in await refused_retry(ids)  # 12 at once: over the 8 active
    retried = await user.stub.RetryTasks(request("Retry", ids[:3]), metadata=md)  # the last 3 tokens
    assert (retried.affected, retried.skipped) == (3, 0)
    assert "submission rate" in await refused_retry(ids[3:6])
