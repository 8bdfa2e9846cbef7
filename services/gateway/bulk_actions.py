"""CancelTasks, RetryTasks and DeleteTasks: one page of a selection per call, each page one autocommit statement
(the single-task path's SQL made set-based), announced only once committed.

A page of a filter selection is chosen first (task_filters.page_keys: at most page_size tasks after the token's
keyset position, in ListTasks order), then acted on by id under row locks; tasks that changed or vanished in
between are skipped, and the next token names the last task taken, so it never shifts whatever the page's tasks
became. Every task taken is either affected or skipped: affected + skipped = tasks taken, exactly. A repeated
call takes the same tasks and finds nothing left to do (a cancelled task is not cancelled again, a queued one
not retried again, a deleted one is unknown), so it affects nothing twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
import redis.asyncio as aioredis

from services.core import commands, outbox, task_filters, validation
from services.core.filter_validation import Selection
from services.core.limits import UserLimits
from services.core.task_model import QUEUED
from services.core.transitions import bulk
from services.core.transitions import user as transitions
from services.core.transitions.rules import change_for


@dataclass(frozen=True)
class PageOutcome:
    affected: int
    skipped: int
    next_page_token: str


async def _take(pool: asyncpg.Pool, owner: str, selection: Selection) -> tuple[list[str], str]:
    """The ids of this call's page (distinct), and the token of the next page ("" when none is left)."""
    if selection.ids is not None:
        return list(selection.ids), ""
    assert selection.query is not None
    rows = await task_filters.page_keys(
        pool, owner, selection.query, limit=selection.page_size + 1, after=selection.after
    )
    token = ""
    if len(rows) > selection.page_size:
        rows = rows[: selection.page_size]
        token = validation.encode_page_token(rows[-1]["created_at"], str(rows[-1]["id"]))
    return [str(r["id"]) for r in rows], token


async def cancel(pool: asyncpg.Pool, redis: aioredis.Redis, owner: str, selection: Selection) -> PageOutcome:
    """As CancelTask for each task of the page: queued or scheduled ones CANCELLED, running ones CANCELLING with
    the stop pushed to their worker (again, for those already cancelling); finished ones skipped."""
    ids, token = await _take(pool, owner, selection)
    if not ids:
        return PageOutcome(0, 0, token)
    result = await transitions.cancel(pool, owner, task_ids=ids)
    await outbox.stop_and_emit(pool, redis, result.to_stop, commands.CANCELLED, result.changes)
    return PageOutcome(len(result.changes), len(ids) - len(result.changes), token)


async def retry(
    pool: asyncpg.Pool, redis: aioredis.Redis, owner: str, selection: Selection, limits: UserLimits
) -> PageOutcome:
    """As RetryTask for each failed, timed-out or cancelled task of the page; the others skipped."""
    ids, token = await _take(pool, owner, selection)
    rows = await bulk.retry(pool, owner, ids, limits)
    if rows:
        dispatchable = [r for r in rows if r["status"] == QUEUED and not r["held"]]
        await outbox.emit_and_dispatch(pool, redis, dispatchable, [change_for(r, r["before"]) for r in rows])
    return PageOutcome(len(rows), len(ids) - len(rows), token)


async def delete(pool: asyncpg.Pool, redis: aioredis.Redis, owner: str, selection: Selection) -> PageOutcome:
    """As DeleteTask for each finished task of the page; unfinished ones skipped (cancel them first)."""
    ids, token = await _take(pool, owner, selection)
    rows = await bulk.delete(pool, owner, ids)
    await outbox.emit(redis, [change_for(r, r["status"], deleted=True) for r in rows], pool)
    return PageOutcome(len(rows), len(ids) - len(rows), token)
