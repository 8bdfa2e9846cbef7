"""TaskStats for events: counted in PostgreSQL, then walked back through the events of one read.

A read of the feed (or one page of replayed history) ends with one count per owner, taken after every event
of the read was committed; the stats after each earlier event are that count with the later events' status
changes undone. The count is the truth at the moment it is read: it may already include a change whose own
event comes in the next read, which then carries the same count, so a quiet stream always ends exact.
While PostgreSQL does not answer, the last counts of an owner are carried forward through the events instead,
so watchers still see their numbers move.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Mapping, Sequence

import asyncpg

from resilienttask.v1 import task_pb2
from services.core.errors import DATABASE_ERRORS
from services.core.events import TaskChange
from services.core.task_store import stats_from_counts

log = logging.getLogger(__name__)

Counts = Counter[int]


async def count_by_status(pool: asyncpg.Pool, owner_ids: Sequence[str]) -> dict[str, Counts]:
    """Tasks per status of each owner, in one query."""
    rows = await pool.fetch(
        "SELECT owner_id, status, count(*) AS n FROM tasks WHERE owner_id = ANY($1::uuid[]) GROUP BY 1, 2",
        list(owner_ids),
    )
    counts: dict[str, Counts] = {owner: Counter() for owner in owner_ids}
    for row in rows:
        counts[str(row["owner_id"])][row["status"]] = row["n"]
    return counts


def _apply(counts: Counts, change: TaskChange, sign: int) -> None:
    """Add (sign 1) or undo (sign -1) one change's move between status buckets."""
    if change.previous_status:
        counts[change.previous_status] -= sign
    if not change.deleted:
        counts[change.task.status] += sign


def _stats(counts: Counts) -> task_pb2.TaskStats:
    # A count taken after a later change (whose event is not in this read yet) can make an undo go below 0.
    return stats_from_counts({status: max(n, 0) for status, n in counts.items()})


def stats_along(final: Counts, changes: Sequence[TaskChange]) -> list[task_pb2.TaskStats]:
    """The stats after each change, given the counts after the last one."""
    counts = Counter(final)
    along = []
    for change in reversed(changes):
        along.append(_stats(counts))
        _apply(counts, change, -1)
    along.reverse()
    return along


class StatsBook:
    """Counts per watched owner: fresh from PostgreSQL when it answers, carried forward when it does not."""

    def __init__(self, pool: asyncpg.Pool, timeout_s: float) -> None:
        self._pool = pool
        self._timeout_s = timeout_s
        self._last: dict[str, Counts] = {}

    async def current(self, owner_id: str) -> Counts:
        """The owner's counts now; raises when PostgreSQL is unreachable (a snapshot cannot do without)."""
        counts = (await count_by_status(self._pool, [owner_id]))[owner_id]
        self._last[owner_id] = Counter(counts)
        return counts

    async def along(
        self, changes_by_owner: Mapping[str, Sequence[TaskChange]]
    ) -> dict[str, list[task_pb2.TaskStats | None]]:
        """Stats after each change of each owner (None where no count was ever known)."""
        try:
            fresh = await asyncio.wait_for(count_by_status(self._pool, list(changes_by_owner)), self._timeout_s)
        except DATABASE_ERRORS as exc:
            log.warning("stats carried forward", extra={"owners": len(changes_by_owner), "error": repr(exc)})
            return {owner: self._carried(owner, changes) for owner, changes in changes_by_owner.items()}
        result: dict[str, list[task_pb2.TaskStats | None]] = {}
        for owner, changes in changes_by_owner.items():
            self._last[owner] = Counter(fresh[owner])
            result[owner] = list(stats_along(fresh[owner], changes))
        return result

    def _carried(self, owner_id: str, changes: Sequence[TaskChange]) -> list[task_pb2.TaskStats | None]:
        last = self._last.get(owner_id)
        if last is None:
            return [None] * len(changes)
        along: list[task_pb2.TaskStats | None] = []
        for change in changes:
            _apply(last, change, 1)
            along.append(_stats(last))
        return along

    def forget(self, owner_id: str) -> None:
        """Drop an owner nobody on this gateway watches any more."""
        self._last.pop(owner_id, None)
