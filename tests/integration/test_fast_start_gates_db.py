"""Concurrency keys and rate limits checked in the one-statement start (services.core.transitions.fast_start): the
races that statement must win on its own, without the checked path's transaction. The checked path and the full
stack are tested in test_kind_controls_db.py and test_kind_controls.py."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

import asyncpg
import redis.asyncio as aioredis

from resilienttask.worker.v1 import worker_pb2
from services.core import kind_controls, rate_limits
from services.core.task_model import QUEUED, RUNNING
from services.core.transitions import gates
from services.core.transitions import user as transitions
from services.core.transitions.fast_start import start_fast
from services.scheduler import store
from tests.helpers import eventually
from tests.integration.test_kind_controls_db import OFF, item, lock_waiters, pool, spec, window
from tests.integration.test_transitions import database, new_user

__all__ = ["database", "pool"]  # the fixtures, used by name

RUN, SKIP = worker_pb2.START_DECISION_RUN, worker_pb2.START_DECISION_SKIP


async def statuses(pool: asyncpg.Pool, owner: str) -> dict[tuple[int, bool], int]:
    rows = await pool.fetch("SELECT status, held, count(*) AS n FROM tasks WHERE owner_id = $1 GROUP BY 1, 2", owner)
    return {(r["status"], r["held"]): r["n"] for r in rows}


async def test_concurrent_one_statement_starts_of_a_key_start_exactly_what_its_limit_leaves(pool: asyncpg.Pool) -> None:
    """Two tasks of the key already run (limit 5): twelve statements of two tasks each, at once, start exactly
    three more between them; the statements hold nothing (what does not fit is left queued, as it was)."""
    owner = await new_user(pool)
    rows, _ = await transitions.submit(pool, owner, spec("sleep", 26, key="customer", limit=5), OFF)
    first = await start_fast(pool, "w", [item(r) for r in rows[:2]], None, {})
    assert len(first) == 2
    rest = rows[2:]
    outcomes = await asyncio.gather(
        *(start_fast(pool, f"w{i}", [item(r) for r in rest[2 * i : 2 * i + 2]], None, {}) for i in range(12))
    )
    assert sum(len(o) for o in outcomes) == 3
    assert await statuses(pool, owner) == {(RUNNING, False): 5, (QUEUED, False): 21}


async def test_keys_are_counted_per_owner_and_in_priority_order_within_one_statement(pool: asyncpg.Pool) -> None:
    """One statement with tasks of two owners sharing a key's name and of a second key: each (owner, key) has
    its own limit, and within the statement the higher priority goes first."""
    alice, bob = await new_user(pool), await new_user(pool)
    low, _ = await transitions.submit(pool, alice, spec("sleep", 2, key="k", limit=2), OFF)
    high, _ = await transitions.submit(
        pool, alice, dataclasses.replace(spec("sleep", 2, key="k", limit=2), priority=5), OFF
    )
    other, _ = await transitions.submit(pool, alice, spec("sleep", 1, key="other", limit=1), OFF)
    bobs, _ = await transitions.submit(pool, bob, spec("sleep", 3, key="k", limit=2), OFF)
    started = await start_fast(pool, "w", [item(r) for r in [*low, *high, *other, *bobs]], None, {})
    ids = {str(r["id"]) for r in started}
    assert ids & {str(r["id"]) for r in low} == set()
    assert {str(r["id"]) for r in high} <= ids
    assert str(other[0]["id"]) in ids
    assert len(ids & {str(r["id"]) for r in bobs}) == 2
    assert len(ids) == 5


async def test_concurrent_rate_limited_starts_never_pass_the_limit_and_give_back_what_they_did_not_use(
    pool: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    """Six start requests at once, each of four tasks of a kind limited to 7 a minute, each scheduler's limiter
    knowing the limit (so tokens are taken ahead and used in the one statement): exactly 7 start, the rest wait
    for the rate limit, and the window holds the 7 starts that happened, no more."""
    kind = f"k-{uuid.uuid4().hex[:8]}"
    await kind_controls.set_rate_limit(pool, kind, 7, 60_000)
    owner = await new_user(pool)
    rows, _ = await transitions.submit(pool, owner, spec(kind, 24), OFF)
    limiters = [rate_limits.RedisLimiter(redis) for _ in range(6)]
    for limiter in limiters:
        limiter.remember({kind: rate_limits.RateLimit(7, 60_000)})
    outcomes = await asyncio.gather(
        *(
            store.start_batch(pool, f"w{i}", [item(r) for r in rows[4 * i : 4 * i + 4]], limiter=limiter)
            for i, limiter in enumerate(limiters)
        )
    )
    decisions = [r.decision for o in outcomes for r in o.results]
    assert decisions.count(RUN) == 7
    assert sorted({r.reason for o in outcomes for r in o.results if r.decision == SKIP}) == ["held: rate limit"]
    assert await window(redis, kind) == 7
    assert await statuses(pool, owner) == {(RUNNING, False): 7, (QUEUED, True): 17}


async def test_tokens_taken_ahead_for_a_kind_no_longer_limited_go_back_and_the_limit_is_forgotten(
    pool: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    kind = f"k-{uuid.uuid4().hex[:8]}"
    await kind_controls.set_rate_limit(pool, kind, 50, 60_000)
    owner = await new_user(pool)
    limiter = rate_limits.RedisLimiter(redis)
    limiter.remember({kind: rate_limits.RateLimit(50, 60_000)})
    await kind_controls.clear_rate_limit(pool, kind)
    rows, _ = await transitions.submit(pool, owner, spec(kind, 3), OFF)
    started = await start_fast(pool, "w", [item(r) for r in rows], limiter, {kind: 3})
    assert len(started) == 3
    assert await window(redis, kind) == 0
    assert limiter.known[kind] is None


async def test_a_keyed_start_whose_snapshot_predates_the_pause_still_sees_it(
    pool: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    """As test_kind_controls_db's pause test, with a key and a rate limit on the task (tokens taken ahead): the
    one statement sees the pause, locks no key for it, and the task is held for the pause with its token given
    back."""
    kind = f"k-{uuid.uuid4().hex[:8]}"
    await kind_controls.set_rate_limit(pool, kind, 10, 60_000)
    owner = await new_user(pool)
    (row,), _ = await transitions.submit(pool, owner, spec(kind, key="customer", limit=3), OFF)
    limiter = rate_limits.RedisLimiter(redis)
    limiter.remember({kind: rate_limits.RateLimit(10, 60_000)})
    async with pool.acquire() as blocker:
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute("SELECT 1 FROM tasks WHERE id = $1 FOR UPDATE", row["id"])
        starting = asyncio.create_task(store.start_batch(pool, "w", [item(row)], limiter=limiter))
        await eventually(lambda: lock_waiters(pool), message="the start waits on the task's row")
        await kind_controls.pause(pool, kind)
        await transaction.rollback()
    outcome = await starting
    assert [(r.decision, r.reason) for r in outcome.results] == [(SKIP, "held: kind paused")]
    held = await pool.fetchrow("SELECT status, held, wait_reason FROM tasks WHERE id = $1", row["id"])
    assert held is not None and tuple(held) == (QUEUED, True, gates.KIND_PAUSED)
    assert await window(redis, kind) == 0


async def test_ends_racing_one_statement_starts_of_a_key_lose_no_release(pool: asyncpg.Pool) -> None:
    """The key's two running tasks end while six start requests of its other tasks run: the limit is never
    passed, and whatever the order, a task still held for the key means the key's places are taken (running, or
    offered to a task an end released): no end's release was lost to a start that held its task meanwhile."""
    for _ in range(5):
        owner = await new_user(pool)
        rows, _ = await transitions.submit(pool, owner, spec("sleep", 14, key="customer", limit=2), OFF)
        first = await start_fast(pool, "w", [item(r) for r in rows[:2]], None, {})
        assert len(first) == 2
        ends = [
            worker_pb2.FinishItem(
                task=worker_pb2.HeldTask(task_id=str(r["id"]), fence=r["fence"]), outcome=worker_pb2.OUTCOME_SUCCEEDED
            )
            for r in first
        ]
        rest = rows[2:]
        await asyncio.gather(
            *(store.finish_batch(pool, "w", [end], store.RetryPolicy()) for end in ends),
            *(store.start_batch(pool, f"w{i}", [item(r) for r in rest[2 * i : 2 * i + 2]]) for i in range(6)),
        )
        counts = await pool.fetchrow(
            "SELECT count(*) FILTER (WHERE status = 2) AS running, "
            "count(*) FILTER (WHERE status = 1 AND held AND wait_reason = $2) AS held, "
            "count(*) FILTER (WHERE status = 1 AND NOT (held AND wait_reason = $2)) AS offered "
            "FROM tasks WHERE owner_id = $1",
            owner,
            gates.CONCURRENCY_KEY,
        )
        assert counts is not None and counts["running"] <= 2, dict(counts or {})
        assert counts["held"] == 0 or counts["running"] + counts["offered"] >= 2, dict(counts)


async def test_an_end_waits_only_for_a_start_that_may_hold_a_task_of_its_key(pool: asyncpg.Pool) -> None:
    """A start counting the key for a start that holds nothing (its start lock) does not keep the key's ends
    waiting; one that may hold a task (the end lock too) does, until it commits, so the end then sees what it
    held."""
    owner = await new_user(pool)
    rows, _ = await transitions.submit(pool, owner, spec("sleep", 2, key="customer", limit=2), OFF)
    running = await start_fast(pool, "w", [item(r) for r in rows], None, {})
    ends = [
        worker_pb2.FinishItem(
            task=worker_pb2.HeldTask(task_id=str(r["id"]), fence=r["fence"]), outcome=worker_pb2.OUTCOME_SUCCEEDED
        )
        for r in running
    ]
    async with pool.acquire() as start:
        transaction = start.transaction()
        await transaction.start()
        counted = await start.fetch("SELECT * FROM rt_key_count($1::uuid[], $2::text[], false)", [owner], ["customer"])
        assert [r["running"] for r in counted] == [2]
        # Would wait for the transaction (forever: it commits only below) if an end took the start lock.
        first = await asyncio.wait_for(store.finish_batch(pool, "w", [ends[0]], store.RetryPolicy()), 60)
        assert first.results[0].accepted
        await start.fetch("SELECT * FROM rt_key_count($1::uuid[], $2::text[], true)", [owner], ["customer"])
        second = asyncio.create_task(store.finish_batch(pool, "w", [ends[1]], store.RetryPolicy()))
        await eventually(lambda: lock_waiters(pool), message="the end waits for the start that may hold")
        assert not second.done()
        await transaction.commit()
    assert (await second).results[0].accepted


async def test_starts_of_a_key_far_from_its_limit_share_it_and_never_pass_it(pool: asyncpg.Pool) -> None:
    """A key of limit 200 is far from it at first: its one-statement starts take one stripe of its start lock
    each, not waiting for each other, and leave room for the other stripes' starts. Thirty run; then twenty-five
    start requests of eight tasks each at once: exactly the 170 places left start (the last ones counted exactly
    on the checked path), the rest are held."""
    owner = await new_user(pool)
    rows, _ = await transitions.submit(pool, owner, spec("sleep", 230, key="customer", limit=200), OFF)
    for i in range(0, 30, 6):
        assert len(await start_fast(pool, "w", [item(r) for r in rows[i : i + 6]], None, {})) == 6
    rest = rows[30:]
    outcomes = await asyncio.gather(
        *(store.start_batch(pool, f"w{i}", [item(r) for r in rest[8 * i : 8 * i + 8]]) for i in range(25))
    )
    assert [r.decision for o in outcomes for r in o.results].count(RUN) == 170
    assert await statuses(pool, owner) == {(RUNNING, False): 200, (QUEUED, True): 30}
