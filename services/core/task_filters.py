"""Searching a user's tasks: the checked filter (TaskFilter, with ListTasks' own status and batch_id) and the
SQL that applies it, always owner-scoped, always with parameters (user text is never pasted into SQL).

Pages are keysets on (created_at, id), newest first, the order ListTasks has always had: a token names the
last task of a page, so the next page starts after it whatever happened meanwhile to the tasks already
seen (they changed status, no longer match, or were deleted). Indexes: migration 0012.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from services.core.task_model import TASK_COLUMNS, in_batch


@dataclass(frozen=True)
class TaskQuery:
    """A checked selection of one owner's tasks; every condition set must hold, an empty one selects all.

    status_sets: each set is a condition "status is one of these" (ListTasks' status and TaskFilter.statuses
    are two such sets, ANDed); batch_ids likewise (each must hold). id_range: the inclusive bounds of the UUIDs
    an id prefix covers.
    """

    status_sets: tuple[frozenset[int], ...] = ()
    batch_ids: tuple[str, ...] = ()
    name_contains: str = ""
    id_range: tuple[str, str] | None = None
    kind: str = ""
    created_after: datetime | None = None
    created_before: datetime | None = None
    schedule_id: str = ""
    dead_lettered: bool = False
    concurrency_key: str = ""


def escape_like(text: str) -> str:
    """`text` as a LIKE pattern matching itself only: the metacharacters % and _ and the escape itself are
    escaped (the statements say ESCAPE '\\')."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class _Params:
    """Positional parameters of one statement: add() returns the placeholder of the value it appends."""

    def __init__(self, first: Iterable[Any] = ()) -> None:
        self.values: list[Any] = list(first)

    def add(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


def _conditions(query: TaskQuery, params: _Params, owner: str) -> list[str]:
    clauses = [f"owner_id = {owner}"]
    for statuses in query.status_sets:
        clauses.append(f"status = ANY({params.add(sorted(statuses))}::smallint[])")
    for batch_id in dict.fromkeys(query.batch_ids):
        clauses.append(in_batch(owner, f"{params.add(batch_id)}::uuid"))
    if query.name_contains:
        # lower() on both sides: the trigram index is on lower(name) (migration 0012).
        pattern = params.add(f"%{escape_like(query.name_contains)}%")
        clauses.append(f"lower(name) LIKE lower({pattern}) ESCAPE '\\'")
    if query.id_range is not None:
        low, high = query.id_range
        clauses.append(f"id BETWEEN {params.add(low)}::uuid AND {params.add(high)}::uuid")
    if query.kind:
        clauses.append(f"kind = {params.add(query.kind)}")
    if query.created_after is not None:
        clauses.append(f"created_at >= {params.add(query.created_after)}")
    if query.created_before is not None:
        clauses.append(f"created_at < {params.add(query.created_before)}")
    if query.schedule_id:
        clauses.append(f"schedule_id = {params.add(query.schedule_id)}::uuid")
    if query.dead_lettered:
        clauses.append("dead_lettered")
    if query.concurrency_key:
        clauses.append(f"concurrency_key = {params.add(query.concurrency_key)}")
    return clauses


def _where(owner_id: str, query: TaskQuery, after: tuple[datetime, str] | None) -> tuple[str, _Params]:
    params = _Params([owner_id])
    clauses = _conditions(query, params, "$1")
    if after is not None:
        created, task_id = after
        clauses.append(f"(created_at, id) < ({params.add(created)}, {params.add(task_id)}::uuid)")
    return " AND ".join(clauses), params


async def list_page(
    pool: asyncpg.Pool,
    owner_id: str,
    query: TaskQuery,
    *,
    limit: int,
    after: tuple[datetime, str] | None,
    columns: str = TASK_COLUMNS,
) -> list[asyncpg.Record]:
    """Up to `limit` matching tasks after the keyset position `after`, newest first."""
    where, params = _where(owner_id, query, after)
    sql = f"SELECT {columns} FROM tasks WHERE {where} ORDER BY created_at DESC, id DESC LIMIT {params.add(limit)}"
    return list(await pool.fetch(sql, *params.values))


async def page_keys(
    pool: asyncpg.Pool, owner_id: str, query: TaskQuery, *, limit: int, after: tuple[datetime, str] | None
) -> list[asyncpg.Record]:
    """The (id, created_at) of up to `limit` matching tasks after `after`, newest first: a bulk action's page."""
    return await list_page(pool, owner_id, query, limit=limit, after=after, columns="id, created_at")


async def count(pool: asyncpg.Pool, owner_id: str, query: TaskQuery) -> int:
    """How many tasks match. A plain count(*): one owner holds at most the stored-task limit (50,000 by
    default, docs/limits.md), which the indexes of migration 0012 count in milliseconds."""
    where, params = _where(owner_id, query, None)
    return int(await pool.fetchval(f"SELECT count(*) FROM tasks WHERE {where}", *params.values))
