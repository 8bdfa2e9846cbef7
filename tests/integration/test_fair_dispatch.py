"""Priorities and fair share on the real stack, through Envoy, counted from the tasks' own start times.

A stack of its own with a small pool (2 workers x 2 slots), no fixed slot share (slot_share 1) and fair sharing
on, so that one user's backlog saturates it: urgent work submitted later starts before the routine work that
was waiting, another user's task starts while the first user's queue is still long (the first user alone is
held by nothing, its backlog beyond the fair cap waits in the surplus lanes; with two users competing, the one
beyond the fair cap waits held in PostgreSQL), and every task ran once.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest

from resilienttask.v1 import task_pb2
from services.core.limits import UserLimits
from services.scheduler import slot_cap
from services.stack.stack import Stack, StackConfig
from services.worker.tracing import published_at_ns
from tests.conftest import TEST_BCRYPT_COST, Stores
from tests.databases import create_database
from tests.helpers import eventually
from tests.integration.accounts import signup
from tests.integration.tasks import UserTasks
from tests.integration.test_user_limits import on_database
from tests.limits import OPEN_AUTH_LIMITS, OPEN_LOGIN_ENV

S = task_pb2
WORKERS, SLOTS = 2, 2
POOL = WORKERS * SLOTS
HEADROOM = 1  # ceil(0.25 x 4 slots): entries queued in the streams ahead of the free slots
LIMITS = UserLimits(
    max_active_tasks=0,
    max_stored_tasks=0,
    submit_rate_per_s=0,
    submit_burst=0,
    slot_share=1,
    fair_share=True,
    fair_headroom_share=0.25,
)
REDIS_DB = 12
WORK_S = 0.3
# The flood's tasks run longer than any wait of the other user's task for a slot, even on a loaded machine: a slot
# then starts at most one flood task between that task's entry and its start (at 0.3 s, a slot that freed early in
# a slow wait could start a second one: 6 against the bound of 4, once, under CI's load).
FLOOD_WORK_S = 5.0


@pytest.fixture(scope="module")
def fair_stack(
    stores: Stores, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Stack]:
    database_url = asyncio.run(create_database(stores.database_url, "fair"))
    config = StackConfig(
        data_dir=tmp_path_factory.mktemp("fair-stack"),
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
        auth_limits=OPEN_AUTH_LIMITS,
    )
    echo = sys.stderr if request.config.getoption("--keep-logs") else None
    with Stack(config, echo=echo) as running:
        yield running


@pytest.fixture
async def db(fair_stack: Stack) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(fair_stack.database_url)
    try:
        # The schedulers write the cap once they have seen the whole pool: all of it, plus the headroom.
        async def cap_known() -> bool:
            return await conn.fetchval("SELECT slots_per_user FROM slot_cap") == POOL + HEADROOM

        await eventually(cap_known, timeout_s=30, message="the slot cap of the live pool")
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def channel(fair_stack: Stack, db: asyncpg.Connection) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(fair_stack.edge_address) as edge:
        yield edge


async def new_user(channel: grpc.aio.Channel, prefix: str) -> UserTasks:
    return UserTasks(channel, await signup(channel, prefix))


async def started_at(db: asyncpg.Connection, tasks: Sequence[task_pb2.Task]) -> dict[str, datetime | None]:
    rows = await db.fetch("SELECT id, started_at FROM tasks WHERE id = ANY($1::uuid[])", [t.id for t in tasks])
    return {str(r["id"]): r["started_at"] for r in rows}


async def count_status(db: asyncpg.Connection, user: UserTasks, status: int) -> int:
    count: int = await db.fetchval(
        "SELECT count(*) FROM tasks WHERE owner_id = $1 AND status = $2", user.account.user_id, status
    )
    return count


async def finished(user: UserTasks, tasks: Sequence[task_pb2.Task]) -> list[task_pb2.Task]:
    return list(await asyncio.gather(*(user.wait_for(t.id, timeout_s=90) for t in tasks)))


async def assert_each_attempt_ran_once(db: asyncpg.Connection, tasks: Sequence[task_pb2.Task]) -> None:
    """No task lost (each ended) and none run twice: one RUNNING history row per attempt."""
    rows = await db.fetch(
        "SELECT t.id, t.status, t.attempt, count(h.*) FILTER (WHERE h.to_status = $2) AS runs FROM tasks AS t "
        "LEFT JOIN task_history AS h ON h.task_id = t.id WHERE t.id = ANY($1::uuid[]) GROUP BY t.id",
        [t.id for t in tasks],
        S.TASK_STATUS_RUNNING,
    )
    assert len(rows) == len(tasks)
    assert all(r["status"] in (S.TASK_STATUS_SUCCEEDED, S.TASK_STATUS_CANCELLED) for r in rows), rows
    assert all(r["runs"] == r["attempt"] <= 1 for r in rows), [dict(r) for r in rows if r["runs"] != r["attempt"]]


async def test_urgent_work_overtakes_waiting_routine_work(channel: grpc.aio.Channel, db: asyncpg.Connection) -> None:
    user = await new_user(channel, "priority")
    early = await user.submit(workload_s=WORK_S, replicas=4 * POOL, priority=1)

    async def saturated() -> bool:
        return await count_status(db, user, S.TASK_STATUS_RUNNING) == POOL

    await eventually(saturated, message="the routine batch fills the pool")
    before = await started_at(db, early)
    urgent = await user.submit(workload_s=WORK_S, replicas=POOL, priority=5)
    late = await user.submit(workload_s=WORK_S, replicas=POOL, priority=1)
    everything = [*early, *urgent, *late]
    assert {t.status for t in await finished(user, everything)} == {S.TASK_STATUS_SUCCEEDED}
    started = await started_at(db, everything)
    last_urgent = max(v for t in urgent if (v := started[t.id]) is not None)
    waiting = [t for t in early if before[t.id] is None]
    overtaking = [t for t in waiting if (v := started[t.id]) is not None and v < last_urgent]
    assert len(waiting) >= 2 * POOL, "the routine batch was still waiting when the urgent one came"
    # Only what already sat in the streams (the headroom, and one release racing the urgent submission) may go
    # first; without priorities every waiting routine task would.
    assert len(overtaking) <= HEADROOM + 2, (len(overtaking), len(waiting))
    late_starts = [started[t.id] for t in late]
    assert all(v is not None and v > last_urgent for v in late_starts), "late routine work waits"
    await assert_each_attempt_ran_once(db, everything)


async def alone_in_the_pool(db: asyncpg.Connection, user: UserTasks | None) -> None:
    """Wait until the schedulers have seen that `user` is alone with active tasks (None: that nobody has any)."""
    lone = user.account.user_id if user is not None else slot_cap.NO_OWNER

    async def seen() -> bool:
        return str(await db.fetchval("SELECT lone_owner FROM slot_cap")) == lone

    await eventually(seen, timeout_s=30, message="the slot cap's owner alone")


async def count_held(db: asyncpg.Connection, user: UserTasks) -> int:
    count: int = await db.fetchval(
        "SELECT count(*) FROM tasks WHERE owner_id = $1 AND held AND status = $2",
        user.account.user_id,
        S.TASK_STATUS_QUEUED,
    )
    return count


async def test_another_users_task_starts_while_one_user_floods(
    channel: grpc.aio.Channel, db: asyncpg.Connection
) -> None:
    flooder, other = await new_user(channel, "flood"), await new_user(channel, "other")
    await alone_in_the_pool(db, None)
    batches = [await flooder.submit(workload_s=FLOOD_WORK_S, replicas=50) for _ in range(2)]
    flood = [t for batch in batches for t in batch]
    try:

        async def saturated() -> bool:
            return await count_status(db, flooder, S.TASK_STATUS_RUNNING) == POOL

        await eventually(saturated, message="the flood fills the pool")
        # Alone in the pool, the flood is held by nothing: beyond the fair cap it waits in the surplus lanes.
        assert await count_held(db, flooder) == 0
        surplus = await db.fetchval(
            "SELECT count(*) FROM tasks WHERE owner_id = $1 AND surplus", flooder.account.user_id
        )
        assert surplus >= len(flood) - POOL - HEADROOM
        await alone_in_the_pool(db, flooder)
        (mine,) = await other.submit(workload_s=WORK_S)
        done = await other.wait_for(mine.id, timeout_s=60)
        assert done.status == S.TASK_STATUS_SUCCEEDED and done.wait_reason == S.WAIT_REASON_UNSPECIFIED
        started = await started_at(db, flood)
        assert await db.fetchval("SELECT NOT surplus FROM tasks WHERE id = $1", mine.id), "in the share lane"
        mine_at = (await started_at(db, [mine]))[mine.id]
        assert mine_at is not None
        # From the moment its entry was added (Valkey's time in the entry id, the machine's clock as PostgreSQL's
        # now()): the flood's starts before it, after its row's commit, say nothing of the order of the reads (a
        # loaded machine may take longer than a run between the two).
        entry = await db.fetchval("SELECT entry_id FROM tasks WHERE id = $1", mine.id)
        published_ns = published_at_ns(entry)
        assert published_ns is not None, entry
        published = datetime.fromtimestamp(published_ns / 1e9, UTC) - timedelta(milliseconds=1)
        meanwhile = [v for v in started.values() if v is not None and published <= v < mine_at]
        not_started = [v for v in started.values() if v is None or v > mine_at]
        # The flood's tasks that started between the other user's entry and its start: those the workers had
        # read before it was published, at most one per slot (its share lane is read before the flood's
        # surplus lane); without the fair share, the whole flood was published ahead of it.
        assert len(meanwhile) <= POOL, len(meanwhile)
        assert len(not_started) >= len(flood) // 2, "the flood was far from drained"
    finally:
        for batch in batches:
            await flooder.cancel_batch(batch[0].batch_id)
    await finished(flooder, flood)
    await assert_each_attempt_ran_once(db, [*flood, mine])
    told = await flooder.get(flood[-1].id)
    assert told.status == S.TASK_STATUS_CANCELLED and told.wait_reason == S.WAIT_REASON_UNSPECIFIED


async def test_with_two_users_competing_the_one_beyond_the_fair_cap_waits_held(
    channel: grpc.aio.Channel, db: asyncpg.Connection
) -> None:
    first, second = await new_user(channel, "first"), await new_user(channel, "second")
    await alone_in_the_pool(db, None)
    (long,) = await first.submit(workload_s=30)
    await alone_in_the_pool(db, first)
    flood = await second.submit(workload_s=WORK_S, replicas=30)
    try:

        async def held_reason_told() -> bool:
            held = await db.fetch(
                "SELECT id FROM tasks WHERE owner_id = $1 AND held AND status = $2 LIMIT 3",
                second.account.user_id,
                S.TASK_STATUS_QUEUED,
            )
            told = [await second.get(str(r["id"])) for r in held]
            return any(t.wait_reason == S.WAIT_REASON_SLOT_SHARE for t in told)

        await eventually(held_reason_told, message="a held task tells why it waits")
        assert (
            await db.fetchval("SELECT count(*) FROM tasks WHERE owner_id = $1 AND surplus", second.account.user_id) == 0
        )
    finally:
        await second.cancel_batch(flood[0].batch_id)
        await first.cancel_batch(long.batch_id)
    await finished(second, flood)
    await finished(first, [long])
    await assert_each_attempt_ran_once(db, [*flood, long])
