"""The scheduler's view of tasks: its transitions (services.core.transitions) and the reads of its sweeps.

The worker protocol (work.py, worker_service.py) calls start_batch, finish_batch and stops_for_held here.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from resilienttask.worker.v1 import worker_pb2
from services.core import commands
from services.core.task_model import CANCELLING, QUEUED, SCHEDULED, TASK_COLUMNS, TERMINAL
from services.core.transitions.finish import FinishOutcome, RetryPolicy, finish_batch
from services.core.transitions.rules import SUPERSEDED, valid_uuids
from services.core.transitions.start import HolderCheck, StartOutcome, start_batch

__all__ = [
    "SUPERSEDED",
    "FinishOutcome",
    "HolderCheck",
    "RetryPolicy",
    "StartOutcome",
    "due_for_publish",
    "finish_batch",
    "published_before",
    "start_batch",
    "stops_for_held",
]


async def stops_for_held(
    pool: asyncpg.Pool, worker_id: str, held: Sequence[worker_pb2.HeldTask]
) -> list[tuple[str, int, commands.StopReason]]:
    """For tasks a worker says it runs: which it must stop, and why (superseded, or cancel requested).

    A task this worker does not hold is "superseded" whatever fence was named, exactly as a stale fence is:
    the answer tells nothing about other workers' tasks or which fence is current.
    """
    if not held:
        return []
    rows = await pool.fetch(
        "SELECT id, status, fence, worker_id FROM tasks WHERE id = ANY($1::uuid[])",
        valid_uuids([h.task_id for h in held]),
    )
    current = {str(r["id"]): r for r in rows}
    stops = []
    for task in held:
        row = current.get(task.task_id)
        if (
            row is None
            or row["worker_id"] != worker_id
            or row["fence"] != task.fence
            or row["status"] in TERMINAL
            or row["status"] in (QUEUED, SCHEDULED)
        ):
            stops.append((task.task_id, task.fence, commands.SUPERSEDED))
        elif row["status"] == CANCELLING:
            stops.append((task.task_id, task.fence, commands.CANCELLED))
    return stops


# -- sweeps -------------------------------------------------------------------------------------------
async def due_for_publish(pool: asyncpg.Pool, limit: int) -> list[asyncpg.Record]:
    """Queued tasks nobody published: retry backoffs that are due, or submissions made while Redis was down."""
    return list(
        await pool.fetch(
            f"SELECT {TASK_COLUMNS}, trace_parent FROM tasks WHERE status = {QUEUED} AND NOT published "
            "AND publish_after <= now() AND NOT held ORDER BY publish_after LIMIT $1",
            limit,
        )
    )


async def published_before(pool: asyncpg.Pool, age_s: float, limit: int) -> list[asyncpg.Record]:
    """Queued, published tasks older than age_s, to check that their entry still exists."""
    return list(
        await pool.fetch(
            f"SELECT {TASK_COLUMNS}, trace_parent FROM tasks WHERE status = {QUEUED} AND published "
            "AND published_at < now() - make_interval(secs => $1) ORDER BY published_at LIMIT $2",
            age_s,
            limit,
        )
    )
