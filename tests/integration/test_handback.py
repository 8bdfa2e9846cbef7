"""A draining worker's handback as the database records it: queued again at once with the attempt given back, a
cancelling task cancelled instead, and a stale handback refused like any stale report."""

from __future__ import annotations

import asyncpg

from resilienttask.worker.v1 import worker_pb2
from services.core.task_model import CANCELLED, CANCELLING, QUEUED, RUNNING
from services.core.transitions.finish import RetryPolicy, finish_batch
from services.core.transitions.rules import SUPERSEDED
from services.core.transitions.start import start_batch
from tests.integration.test_transitions import database, new_task  # noqa: F401  (the database fixture)

WORKER = "worker-a"
HANDED_BACK = "handed back: the worker drained before the task finished; stopped cooperatively after 1 ms"


async def _pool(url: str) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    assert pool is not None
    return pool


async def _started(pool: asyncpg.Pool, max_attempts: int) -> tuple[str, int]:
    """A task of one attempt at most, started on WORKER: (task id, fence)."""
    task_id = await new_task(pool, QUEUED)
    row = await pool.fetchrow(
        "UPDATE tasks SET max_attempts = $2 WHERE id = $1 RETURNING dispatch_id", task_id, max_attempts
    )
    assert row is not None
    item = worker_pb2.StartItem(task_id=task_id, dispatch_id=str(row["dispatch_id"]), entry_id="e-1")
    (result,) = (await start_batch(pool, WORKER, [item])).results
    assert result.decision == worker_pb2.START_DECISION_RUN
    return task_id, result.fence


def _handback(task_id: str, fence: int) -> worker_pb2.FinishItem:
    return worker_pb2.FinishItem(
        task=worker_pb2.HeldTask(task_id=task_id, fence=fence),
        outcome=worker_pb2.OUTCOME_HANDED_BACK,
        error=HANDED_BACK,
    )


async def test_a_handed_back_task_is_queued_at_once_with_its_attempt_given_back(database: str) -> None:  # noqa: F811
    pool = await _pool(database)
    try:
        task_id, fence = await _started(pool, max_attempts=1)
        before = await pool.fetchrow("SELECT dispatch_id, attempt FROM tasks WHERE id = $1", task_id)
        assert before is not None and before["attempt"] == 1
        outcome = await finish_batch(pool, WORKER, [_handback(task_id, fence)], RetryPolicy(base_ms=60_000))
        assert [r.accepted for r in outcome.results] == [True]
        row = await pool.fetchrow(
            "SELECT status, attempt, error, dispatch_id, published, publish_after <= now() AS due, dead_lettered "
            "FROM tasks WHERE id = $1",
            task_id,
        )
        assert row is not None
        assert row["status"] == QUEUED and row["attempt"] == 0, "the last attempt was not used up"
        assert row["error"] == "" and not row["dead_lettered"]
        assert row["dispatch_id"] != before["dispatch_id"] and not row["published"], "a new dispatch, published anew"
        assert row["due"], "no retry backoff: due at once"
        detail = await pool.fetchval(
            "SELECT detail FROM task_history WHERE task_id = $1 AND from_status = $2 AND to_status = $3",
            task_id,
            RUNNING,
            QUEUED,
        )
        assert detail == HANDED_BACK
    finally:
        await pool.close()


async def test_a_cancelling_task_handed_back_is_cancelled_and_a_stale_handback_refused(
    database: str,  # noqa: F811
) -> None:
    pool = await _pool(database)
    try:
        cancelling, fence = await _started(pool, max_attempts=3)
        await pool.execute("UPDATE tasks SET status = $2 WHERE id = $1", cancelling, CANCELLING)
        stale, stale_fence = await _started(pool, max_attempts=3)
        outcome = await finish_batch(
            pool, WORKER, [_handback(cancelling, fence), _handback(stale, stale_fence + 1)], RetryPolicy()
        )
        assert [r.accepted for r in outcome.results] == [True, False]
        assert outcome.results[1].reason == SUPERSEDED
        statuses = dict(
            await pool.fetch("SELECT id::text, status FROM tasks WHERE id = ANY($1::uuid[])", [cancelling, stale])
        )
        assert statuses == {cancelling: CANCELLED, stale: RUNNING}
    finally:
        await pool.close()
