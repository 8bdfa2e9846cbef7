"""The schedules table: what users change through a gateway, and what a firing records.

Every statement filters by owner; a schedule of another user is as absent as one that never existed.
"""

from __future__ import annotations

import contextlib
import uuid
from datetime import datetime

import asyncpg

from services.core.errors import ResourceExhausted
from services.core.schedules.model import QUALIFIED_SCHEDULE_COLUMNS, SCHEDULE_COLUMNS

# The latest firing's first task as it now is (a batch's id is its first replica's id, task_model.in_batch).
_WITH_STATUS = (
    f"SELECT {QUALIFIED_SCHEDULE_COLUMNS}, t.status AS last_status FROM schedules s "
    "LEFT JOIN tasks t ON t.id = s.last_batch_id AND t.owner_id = s.owner_id"
)


async def get(db: asyncpg.Pool | asyncpg.Connection, owner: str, schedule_id: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await db.fetchrow(
        f"{_WITH_STATUS} WHERE s.id = $1 AND s.owner_id = $2", schedule_id, owner
    )
    return row


async def create(
    pool: asyncpg.Pool,
    owner: str,
    request_id: str,
    spec: bytes,
    paused: bool,
    now: datetime,
    next_slot: datetime | None,
    fire_at: datetime | None,
    max_schedules: int,
) -> asyncpg.Record:
    """Store a new schedule, or return the one this request_id created before.

    The owner's row is locked first, so two creations of one user are counted one after the other and cannot
    both take the last free place (max_schedules, 0: no limit).
    """
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT 1 FROM users WHERE id = $1 FOR NO KEY UPDATE", owner)
        existing = await conn.fetchval(
            "SELECT id FROM schedules WHERE owner_id = $1 AND request_id = $2", owner, request_id
        )
        if existing is None:
            held = await conn.fetchval("SELECT count(*) FROM schedules WHERE owner_id = $1", owner)
            if max_schedules and held >= max_schedules:
                raise ResourceExhausted(f"schedules: at most {max_schedules} per user; {held} now (delete one first)")
            existing = uuid.uuid4()
            await conn.execute(
                "INSERT INTO schedules (id, owner_id, request_id, spec, paused, anchor, next_slot, fire_at, "
                "created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $6, $6)",
                existing,
                owner,
                request_id,
                spec,
                paused,
                now,
                next_slot,
                fire_at,
            )
        row = await get(conn, owner, str(existing))
    assert row is not None
    return row


async def list_page(
    pool: asyncpg.Pool, owner: str, limit: int, after: tuple[datetime, str] | None
) -> list[asyncpg.Record]:
    """The owner's schedules, oldest first, after the given (created_at, id)."""
    if after is None:
        rows = await pool.fetch(
            f"{_WITH_STATUS} WHERE s.owner_id = $1 ORDER BY s.created_at, s.id LIMIT $2", owner, limit
        )
    else:
        rows = await pool.fetch(
            f"{_WITH_STATUS} WHERE s.owner_id = $1 AND (s.created_at, s.id) > ($3, $4::uuid) "
            "ORDER BY s.created_at, s.id LIMIT $2",
            owner,
            limit,
            *after,
        )
    return list(rows)


async def lock(conn: asyncpg.Connection, owner: str, schedule_id: str) -> asyncpg.Record | None:
    """The schedule, locked until the caller's transaction ends (a scheduler firing it is waited for)."""
    row: asyncpg.Record | None = await conn.fetchrow(
        f"SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE id = $1 AND owner_id = $2 FOR UPDATE", schedule_id, owner
    )
    return row


async def set_timing(
    conn: asyncpg.Connection,
    schedule_id: str,
    *,
    spec: bytes,
    paused: bool,
    anchor: datetime,
    next_slot: datetime | None,
    fire_at: datetime | None,
    now: datetime,
) -> None:
    """A changed spec or paused flag, with the slots that follow from it (the caller holds the row locked)."""
    await conn.execute(
        "UPDATE schedules SET spec = $2, paused = $3, anchor = $4, next_slot = $5, fire_at = $6, "
        "updated_at = $7, version = version + 1 WHERE id = $1",
        schedule_id,
        spec,
        paused,
        anchor,
        next_slot,
        fire_at,
        now,
    )


async def delete(pool: asyncpg.Pool, owner: str, schedule_id: str) -> bool:
    """Remove the schedule (its tasks stay, with their schedule_id); False when there was none."""
    gone = await pool.fetchval("DELETE FROM schedules WHERE id = $1 AND owner_id = $2 RETURNING id", schedule_id, owner)
    return gone is not None


async def record_firings(
    conn: asyncpg.Connection,
    schedule_id: str,
    *,
    last_slot: datetime | None,
    last_batch_id: str | None,
    last_error: str,
    fired: int,
    skipped: int,
    next_slot: datetime | None = None,
    fire_at: datetime | None = None,
    advance: bool = True,
) -> None:
    """Count what a firing did and, when `advance`, move the schedule to its next slot.

    A firing that submitted nothing keeps the previous last_slot and last_batch_id.
    """
    await conn.execute(
        "UPDATE schedules SET fired = fired + $2, skipped = skipped + $3, last_error = $4, "
        "last_slot = coalesce($5, last_slot), last_batch_id = coalesce($6::uuid, last_batch_id), "
        "next_slot = CASE WHEN $7 THEN $8 ELSE next_slot END, fire_at = CASE WHEN $7 THEN $9 ELSE fire_at END, "
        "version = version + 1 WHERE id = $1",
        schedule_id,
        fired,
        skipped,
        last_error,
        last_slot,
        last_batch_id,
        advance,
        next_slot,
        fire_at,
    )


async def claim_due(conn: asyncpg.Connection, now: datetime) -> asyncpg.Record | None:
    """The earliest schedule due by now that no other scheduler is firing, locked until the transaction ends.

    SKIP LOCKED: a schedule another scheduler holds is left to it rather than waited for; once it commits, the
    schedule is no longer due, and if it died, its lock went with its connection and the schedule is taken here.
    """
    row: asyncpg.Record | None = await conn.fetchrow(
        f"SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE fire_at <= $1 ORDER BY fire_at LIMIT 1 FOR UPDATE SKIP LOCKED",
        now,
    )
    return row


async def wait_for_holder(pool: asyncpg.Pool, now: datetime, timeout_ms: int) -> None:
    """Block until the earliest schedule due by now, which another scheduler holds, is let go: its firing
    committed (it is no longer due) or its scheduler died (its lock went with its connection), at most
    timeout_ms. Whatever this locks on the way is let go at once, for claim_due to take."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = {int(timeout_ms)}")
        with contextlib.suppress(asyncpg.LockNotAvailableError):
            await conn.fetchval("SELECT id FROM schedules WHERE fire_at <= $1 ORDER BY fire_at LIMIT 1 FOR UPDATE", now)


async def earliest_fire_at(pool: asyncpg.Pool) -> datetime | None:
    """When the next schedule is due (in the past while another scheduler is firing it); None: nothing is."""
    earliest: datetime | None = await pool.fetchval("SELECT min(fire_at) FROM schedules")
    return earliest


async def postpone(pool: asyncpg.Pool, schedule_id: str, fire_at: datetime, error: str) -> None:
    """A schedule whose firing failed for a reason of its own is tried again later, not at once forever."""
    await pool.execute(
        "UPDATE schedules SET fire_at = $2, last_error = $3, version = version + 1 WHERE id = $1 AND fire_at < $2",
        schedule_id,
        fire_at,
        error,
    )
