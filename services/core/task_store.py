"""Task rows in PostgreSQL that are not transitions: the gateway's reads (every one filtered by owner) and
the publication mark. Status changes live in services.core.transitions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from resilienttask.v1 import task_pb2
from services.core.task_model import (
    CANCELLED,
    CANCELLING,
    QUEUED,
    RUNNING,
    SCHEDULED,
    SUMMARY_COLUMNS,
    TASK_COLUMNS,
    in_batch,
)


async def mark_published(
    pool: asyncpg.Pool, task_ids: Sequence[str], dispatch_ids: Sequence[str], entry_ids: Sequence[str]
) -> None:
    """Record that the entries are in the stream, so the sweeper leaves the tasks alone.

    Not a transition, so the commit does not wait for the disk: if a crash loses this update, the sweeper
    publishes the task again and fencing makes the duplicate entry harmless. Only a task still queued on
    the dispatch these entries carry is marked: one that started meanwhile needs no mark (so nothing is
    written), and one requeued meanwhile waits for its own new dispatch.
    """
    # One autocommit statement; set_config(..., true) lasts until its own commit. Locks are taken in id
    # order, like every other multi-row change, so this never deadlocks with them.
    await pool.execute(
        "WITH cfg AS (SELECT set_config('synchronous_commit', 'off', true)), "
        "t AS (SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[]) AS u(id, dispatch_id, entry_id)), "
        f"locked AS (SELECT tasks.id FROM tasks JOIN t ON tasks.id = t.id WHERE tasks.status = {QUEUED} "
        "AND tasks.dispatch_id = t.dispatch_id "
        "ORDER BY tasks.id FOR UPDATE OF tasks) "
        "UPDATE tasks SET published = true, published_at = now(), entry_id = t.entry_id "
        "FROM cfg, t, locked WHERE tasks.id = t.id AND tasks.dispatch_id = t.dispatch_id AND tasks.id = locked.id",
        list(task_ids),
        list(dispatch_ids),
        list(entry_ids),
    )


# -- reads ---------------------------------------------------------------------------------------------
async def get(pool: asyncpg.Pool, owner_id: str, task_id: str) -> asyncpg.Record | None:
    return await pool.fetchrow(f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1 AND owner_id = $2", task_id, owner_id)


async def list_page(
    pool: asyncpg.Pool,
    owner_id: str,
    *,
    status: int,
    batch_id: str | None,
    limit: int,
    after: tuple[Any, str] | None,
    columns: str = TASK_COLUMNS,
) -> list[asyncpg.Record]:
    """Newest first, keyset-paged on (created_at, id)."""
    clauses = ["owner_id = $1"]
    args: list[Any] = [owner_id]
    if status:
        args.append(status)
        clauses.append(f"status = ${len(args)}")
    if batch_id:
        args.append(batch_id)
        clauses.append(in_batch("$1", f"${len(args)}::uuid"))
    if after is not None:
        args.extend(after)
        clauses.append(f"(created_at, id) < (${len(args) - 1}, ${len(args)}::uuid)")
    args.append(limit)
    return list(
        await pool.fetch(
            f"SELECT {columns} FROM tasks WHERE {' AND '.join(clauses)} "
            f"ORDER BY created_at DESC, id DESC LIMIT ${len(args)}",
            *args,
        )
    )


async def recent_summaries(pool: asyncpg.Pool, owner_id: str, limit: int) -> list[asyncpg.Record]:
    """The owner's newest tasks without payload or result (task_model.row_to_summary reads them)."""
    return await list_page(pool, owner_id, status=0, batch_id=None, limit=limit, after=None, columns=SUMMARY_COLUMNS)


async def stats(pool: asyncpg.Pool, owner_id: str) -> task_pb2.TaskStats:
    rows = await pool.fetch("SELECT status, count(*) AS n FROM tasks WHERE owner_id = $1 GROUP BY status", owner_id)
    return stats_from_counts({r["status"]: r["n"] for r in rows})


def stats_from_counts(counts: dict[int, int]) -> task_pb2.TaskStats:
    """Counts per status as TaskStats; SCHEDULED tasks are not active (they wait for their run_at)."""

    def n(status: int) -> int:
        return int(counts.get(status, 0))

    running = n(RUNNING) + n(CANCELLING)
    return task_pb2.TaskStats(
        active=n(QUEUED) + running,
        queued=n(QUEUED),
        running=running,
        succeeded=n(task_pb2.TASK_STATUS_SUCCEEDED),
        failed=n(task_pb2.TASK_STATUS_FAILED),
        cancelled=n(CANCELLED),
        timed_out=n(task_pb2.TASK_STATUS_TIMED_OUT),
        scheduled=n(SCHEDULED),
    )
