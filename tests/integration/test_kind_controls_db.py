"""Kind controls and concurrency keys in the database itself (migration 0016): the races the start statement and
PauseKind must win, and a key counted across concurrent starts. The full-stack behaviour is in
test_kind_controls.py."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as aioredis

from resilienttask.worker.v1 import worker_pb2
from services.core import keys, kind_controls, rate_limits
from services.core.limits import UserLimits
from services.core.task_model import QUEUED
from services.core.transitions import gates
from services.core.transitions import user as transitions
from services.scheduler import store
from tests.helpers import eventually
from tests.integration.test_transitions import database, new_user

__all__ = ["database"]  # the fixture, used by name

OFF = UserLimits.unlimited()
RUN, SKIP = worker_pb2.START_DECISION_RUN, worker_pb2.START_DECISION_SKIP


@pytest.fixture
async def pool(database: str) -> AsyncIterator[asyncpg.Pool]:
    created = await asyncpg.create_pool(database, min_size=1, max_size=12)
    assert created is not None
    try:
        yield created
    finally:
        await created.close()


def spec(kind: str, replicas: int = 1, key: str | None = None, limit: int = 0) -> transitions.Submission:
    return transitions.Submission(
        "t", kind, {}, 0, 1000, replicas, 3, str(uuid.uuid4()), concurrency_key=key, concurrency_limit=limit
    )


def item(row: asyncpg.Record) -> worker_pb2.StartItem:
    """The task's current dispatch, named as its stream entry would name it (kind, then the entry id)."""
    return worker_pb2.StartItem(
        task_id=str(row["id"]), dispatch_id=str(row["dispatch_id"]), entry_id=f"{row['kind']}:1-{row['replica_index']}"
    )


async def lock_waiters(pool: asyncpg.Pool) -> int:
    waiting: int = await pool.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    return waiting


async def test_a_start_whose_snapshot_predates_the_pause_still_sees_it(pool: asyncpg.Pool) -> None:
    """The start statement's snapshot is taken before the pause commits (it waits on the task's row meanwhile),
    and it takes the kind's lock only after the pause returned: the fresh read inside rt_kind_gates sees it."""
    kind = f"k-{uuid.uuid4().hex[:8]}"
    owner = await new_user(pool)
    (row,), _ = await transitions.submit(pool, owner, spec(kind), OFF)
    async with pool.acquire() as blocker:
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute("SELECT 1 FROM tasks WHERE id = $1 FOR UPDATE", row["id"])
        starting = asyncio.create_task(store.start_batch(pool, "w", [item(row)]))
        await eventually(lambda: lock_waiters(pool), message="the start waits on the task's row")
        paused = await kind_controls.pause(pool, kind)
        assert paused.paused_at is not None
        await transaction.rollback()
    outcome = await starting
    assert [(r.decision, r.reason) for r in outcome.results] == [(SKIP, "held: kind paused")]
    held = await pool.fetchrow("SELECT status, held, wait_reason FROM tasks WHERE id = $1", row["id"])
    assert held is not None and tuple(held) == (QUEUED, True, gates.KIND_PAUSED)


async def test_a_pause_waits_for_the_starts_in_flight(pool: asyncpg.Pool) -> None:
    kind = f"k-{uuid.uuid4().hex[:8]}"
    async with pool.acquire() as start:
        transaction = start.transaction()
        await transaction.start()
        assert await start.fetch("SELECT * FROM rt_kind_gates($1::text[])", [kind]) == []
        pausing = asyncio.create_task(kind_controls.pause(pool, kind))
        await eventually(lambda: lock_waiters(pool), message="the pause waits for the start's lock")
        assert not pausing.done()
        await transaction.commit()
    assert (await pausing).paused_at is not None


async def test_concurrent_starts_of_one_key_start_only_its_limit(pool: asyncpg.Pool) -> None:
    owner = await new_user(pool)
    rows, _ = await transitions.submit(pool, owner, spec("sleep", 20, key="customer", limit=2), OFF)
    outcomes = await asyncio.gather(
        *(store.start_batch(pool, f"w{i}", [item(r) for r in rows[2 * i : 2 * i + 2]]) for i in range(10))
    )
    decisions = [r.decision for outcome in outcomes for r in outcome.results]
    assert decisions.count(RUN) == 2 and decisions.count(SKIP) == 18
    reasons = await pool.fetch(
        "SELECT wait_reason, count(*) AS n FROM tasks WHERE owner_id = $1 AND held GROUP BY wait_reason", owner
    )
    assert {r["wait_reason"]: r["n"] for r in reasons} == {gates.CONCURRENCY_KEY: 18}
    running = await pool.fetch("SELECT id, fence FROM tasks WHERE owner_id = $1 AND status = 2", owner)
    ended = worker_pb2.FinishItem(
        task=worker_pb2.HeldTask(task_id=str(running[0]["id"]), fence=running[0]["fence"]),
        outcome=worker_pb2.OUTCOME_SUCCEEDED,
    )
    worker = _worker_of(outcomes, str(running[0]["id"]))
    outcome = await store.finish_batch(pool, worker, [ended], store.RetryPolicy())
    assert outcome.results[0].accepted
    still = await pool.fetchval(
        "SELECT count(*) FROM tasks WHERE owner_id = $1 AND held AND wait_reason = $2", owner, gates.CONCURRENCY_KEY
    )
    assert still == 17, "one end releases one held task of the key"


def _worker_of(outcomes: list[store.StartOutcome], task_id: str) -> str:
    for index, outcome in enumerate(outcomes):
        if any(r.task_id == task_id and r.decision == RUN for r in outcome.results):
            return f"w{index}"
    raise AssertionError(task_id)


async def window(redis: aioredis.Redis, kind: str) -> int:
    """Starts the kind's rate window holds."""
    held: int = await redis.zcard(keys.rate_window(kind))
    return held


async def test_a_rate_token_taken_by_a_task_its_key_holds_is_given_back(
    pool: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    """The tokens are taken before the keys are counted (no key is locked while Redis answers): the window keeps
    only the starts that happened."""
    kind = f"k-{uuid.uuid4().hex[:8]}"
    await kind_controls.set_rate_limit(pool, kind, 5, 60_000)
    owner = await new_user(pool)
    rows, _ = await transitions.submit(pool, owner, spec(kind, 3, key="customer", limit=1), OFF)
    limiter = rate_limits.RedisLimiter(redis)
    outcome = await store.start_batch(pool, "w", [item(r) for r in rows], limiter=limiter)
    assert sorted(r.reason for r in outcome.results if r.decision == SKIP) == ["held: concurrency key full"] * 2
    assert [r.decision for r in outcome.results].count(RUN) == 1
    assert await window(redis, kind) == 1
    # Taken ahead this time (the limit is known now), and given back the same way.
    more, _ = await transitions.submit(pool, owner, spec(kind, 2, key="customer", limit=1), OFF)
    outcome = await store.start_batch(pool, "w", [item(r) for r in more], limiter=limiter)
    assert [r.decision for r in outcome.results] == [SKIP, SKIP]
    assert await window(redis, kind) == 1


async def test_tokens_taken_ahead_for_a_limit_since_lowered_never_start_more_than_the_limit(
    pool: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    """A scheduler takes its tokens before its transaction, for the limit it last read; an operator lowered it
    meanwhile: the start goes by the limit read under the kind's lock, and what was taken ahead goes back."""
    kind = f"k-{uuid.uuid4().hex[:8]}"
    await kind_controls.set_rate_limit(pool, kind, 100, 60_000)
    owner = await new_user(pool)
    limiter = rate_limits.RedisLimiter(redis)
    limiter.remember({kind: rate_limits.RateLimit(100, 60_000)})
    await kind_controls.set_rate_limit(pool, kind, 2, 60_000)
    rows, _ = await transitions.submit(pool, owner, spec(kind, 5), OFF)
    outcome = await store.start_batch(pool, "w", [item(r) for r in rows], limiter=limiter)
    assert [r.decision for r in outcome.results].count(RUN) == 2, [r.reason for r in outcome.results]
    assert sorted(r.reason for r in outcome.results if r.decision == SKIP) == ["held: rate limit"] * 3
    assert await window(redis, kind) == 2
