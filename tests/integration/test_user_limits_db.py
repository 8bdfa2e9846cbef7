"""Per-user limits in the database itself (migration 0008): counters that follow the rows whatever statement
changes them, admission that two concurrent submissions cannot both pass, the slot cap's held tasks and their
release, and ClearHistory page by page. The full-stack behaviour is in test_user_limits.py."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from resilienttask.worker.v1 import worker_pb2
from services.core.limits import UserLimits
from services.core.task_model import CANCELLED, QUEUED, RUNNING, SUCCEEDED
from services.core.transitions import user as transitions
from services.scheduler import slot_cap, store
from tests.integration.test_transitions import database, new_user

__all__ = ["database"]  # the fixture, used by name

OFF = UserLimits.unlimited()


@pytest.fixture
async def pool(database: str) -> AsyncIterator[asyncpg.Pool]:
    created = await asyncpg.create_pool(database, min_size=1, max_size=8)
    assert created is not None
    try:
        yield created
    finally:
        await created.close()


def spec(replicas: int = 1, request_id: str = "") -> transitions.Submission:
    return transitions.Submission("t", "sleep", {}, 0, 1000, replicas, 3, request_id or str(uuid.uuid4()))


async def counters(pool: asyncpg.Pool, owner: str) -> dict[str, int]:
    row = await pool.fetchrow(
        "SELECT active_tasks, stored_tasks, dispatched_tasks, waiting_tasks FROM users WHERE id = $1", owner
    )
    assert row is not None
    return dict(row)


async def counted(pool: asyncpg.Pool, owner: str) -> dict[str, int]:
    """The same four numbers, counted from the rows."""
    row = await pool.fetchrow(
        "SELECT count(*) FILTER (WHERE status IN (1, 2, 3)) AS active_tasks, count(*) AS stored_tasks, "
        "count(*) FILTER (WHERE status IN (1, 2, 3) AND NOT held) AS dispatched_tasks, "
        "count(*) FILTER (WHERE status = 1 AND held) AS waiting_tasks FROM tasks WHERE owner_id = $1",
        owner,
    )
    assert row is not None
    return dict(row)


async def start(pool: asyncpg.Pool, rows: list[asyncpg.Record]) -> None:
    items = [worker_pb2.StartItem(task_id=str(r["id"]), dispatch_id=str(r["dispatch_id"]), entry_id="e") for r in rows]
    outcome = await store.start_batch(pool, "w", items)
    assert {r.decision for r in outcome.results} == {worker_pb2.START_DECISION_RUN}


async def succeed(pool: asyncpg.Pool, task_ids: list[str]) -> None:
    rows = await pool.fetch("SELECT id, fence FROM tasks WHERE id = ANY($1::uuid[])", task_ids)
    items = [
        worker_pb2.FinishItem(
            task=worker_pb2.HeldTask(task_id=str(r["id"]), fence=r["fence"]), outcome=worker_pb2.OUTCOME_SUCCEEDED
        )
        for r in rows
    ]
    outcome = await store.finish_batch(pool, "w", items, store.RetryPolicy())
    assert all(r.accepted for r in outcome.results)


async def test_counters_follow_every_change_of_the_rows(pool: asyncpg.Pool) -> None:
    owner = await new_user(pool)
    rows, _ = await transitions.submit(pool, owner, spec(5), OFF)
    await start(pool, rows[:3])
    await succeed(pool, [str(rows[0]["id"])])
    await transitions.cancel(pool, owner, task_id=str(rows[3]["id"]))
    await transitions.cancel(pool, owner, task_id=str(rows[1]["id"]))  # running: cancelling
    await transitions.retry(pool, owner, str(rows[3]["id"]), OFF)
    await transitions.delete(pool, owner, str(rows[0]["id"]))
    assert (
        await counters(pool, owner)
        == await counted(pool, owner)
        == {
            "active_tasks": 4,
            "stored_tasks": 4,
            "dispatched_tasks": 4,
            "waiting_tasks": 0,
        }
    )


async def test_two_concurrent_submissions_cannot_both_take_the_last_place(pool: asyncpg.Pool) -> None:
    limits = UserLimits(max_active_tasks=10, submit_rate_per_s=0)
    owner = await new_user(pool)
    await transitions.submit(pool, owner, spec(9), limits)
    results = await asyncio.gather(
        *(transitions.submit(pool, owner, spec(1), limits) for _ in range(6)), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, asyncpg.PostgresError)]
    assert len(refused) == 5 and all(r.sqlstate == "RT003" and "active tasks" in str(r) for r in refused)
    assert (await counted(pool, owner))["active_tasks"] == 10


async def test_a_repeated_request_at_the_limit_returns_its_first_tasks(pool: asyncpg.Pool) -> None:
    limits = UserLimits(max_active_tasks=3, submit_rate_per_s=0)
    owner = await new_user(pool)
    first, created = await transitions.submit(pool, owner, spec(3, "once"), limits)
    again, created_again = await transitions.submit(pool, owner, spec(3, "once"), limits)
    assert created and not created_again
    assert [r["id"] for r in again] == [r["id"] for r in first]


async def test_the_slot_cap_holds_tasks_back_and_an_end_releases_the_next(pool: asyncpg.Pool) -> None:
    owner = await new_user(pool)
    await pool.execute("UPDATE slot_cap SET slots_per_user = 2")
    rows, _ = await transitions.submit(pool, owner, spec(5), OFF)
    assert [r["held"] for r in rows] == [False, False, True, True, True]
    assert await store.due_for_publish(pool, 100) == [], "held tasks are never due (and the others not yet)"
    await start(pool, rows[:2])
    await succeed(pool, [str(rows[0]["id"])])
    held = await pool.fetch("SELECT id FROM tasks WHERE owner_id = $1 AND held ORDER BY replica_index", owner)
    assert [r["id"] for r in held] == [rows[3]["id"], rows[4]["id"]], "the oldest held task was released"
    # A cancel of a held task ends it at once; a cancel of a dispatched queued one releases the next.
    await transitions.cancel(pool, owner, task_id=str(rows[4]["id"]))
    await transitions.cancel(pool, owner, task_id=str(rows[2]["id"]))
    statuses = await pool.fetch("SELECT status, held FROM tasks WHERE owner_id = $1 ORDER BY replica_index", owner)
    assert [(r["status"], r["held"]) for r in statuses] == [
        (SUCCEEDED, False),
        (RUNNING, False),
        (CANCELLED, False),
        (QUEUED, False),
        (CANCELLED, True),
    ]
    assert await counters(pool, owner) == await counted(pool, owner)


async def test_a_grown_cap_releases_waiting_tasks_through_the_sweep(pool: asyncpg.Pool) -> None:
    owner = await new_user(pool)
    await pool.execute("UPDATE slot_cap SET slots_per_user = 1")
    rows, _ = await transitions.submit(pool, owner, spec(4), OFF)
    assert sum(not r["held"] for r in rows) == 1
    await pool.execute("UPDATE slot_cap SET slots_per_user = 3")
    assert await slot_cap.release_waiting(pool) == 2
    assert await slot_cap.release_waiting(pool) == 0
    assert (await counters(pool, owner))["dispatched_tasks"] == 3
    assert len(await store.due_for_publish(pool, 100)) == 2, "released tasks are due at once"


async def test_clear_history_deletes_page_by_page_each_committed_on_its_own(pool: asyncpg.Pool) -> None:
    owner = await new_user(pool)
    await transitions.submit(pool, owner, spec(50), OFF)
    await transitions.submit(pool, owner, spec(25), OFF)
    await pool.execute("UPDATE tasks SET status = $2, finished_at = now() WHERE owner_id = $1", owner, CANCELLED)
    (active,), _ = await transitions.submit(pool, owner, spec(1), OFF)
    pages = []
    async for page in transitions.clear_history(pool, owner, 20):
        pages.append(len(page))
        # Each page is committed before the caller announces it: another session sees it gone already.
        left = await pool.fetchval("SELECT count(*) FROM tasks WHERE owner_id = $1", owner)
        assert left == 76 - sum(pages)
    assert pages == [20, 20, 20, 15]
    assert await pool.fetchval("SELECT id FROM tasks WHERE owner_id = $1", owner) == active["id"]
    assert (await counters(pool, owner))["stored_tasks"] == 1


async def test_a_retry_counts_as_a_submission_and_waits_for_the_cap(pool: asyncpg.Pool) -> None:
    limits = UserLimits(max_active_tasks=2, submit_rate_per_s=0)
    owner = await new_user(pool)
    await pool.execute("UPDATE slot_cap SET slots_per_user = 1")
    (old, _), _ = await transitions.submit(pool, owner, spec(2), limits)
    await transitions.cancel(pool, owner, batch_id=str(old["batch_id"]))
    dispatched, held = (await transitions.submit(pool, owner, spec(2), limits))[0]
    assert not dispatched["held"] and held["held"]
    with pytest.raises(asyncpg.PostgresError, match="active tasks") as refused:
        await transitions.retry(pool, owner, str(old["id"]), limits)
    assert refused.value.sqlstate == "RT003"
    assert await pool.fetchval("SELECT status FROM tasks WHERE id = $1", old["id"]) == CANCELLED, "nothing written"
    await transitions.cancel(pool, owner, task_id=str(held["id"]))
    retried = await transitions.retry(pool, owner, str(old["id"]), limits)
    assert retried is not None and retried[0]["status"] == QUEUED and retried[0]["held"], "the cap is taken"
    assert await counters(pool, owner) == await counted(pool, owner)
