"""Operators' controls of task kinds (pause, rate limit) and the operator role, as stored in PostgreSQL.

A pause takes its kind's advisory lock exclusively before it commits: every start holds the same lock shared
until it commits (rt_kind_gates, migration 0016), so when PauseKind returns, each start either committed before
or reads the pause. Resume and clearing a limit hand the kind's held tasks back to the slot share, which
publishes them (rt_unhold): nothing is lost, and each is checked again when it starts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from services.core.transitions.gates import KIND_PAUSED, RATE_LIMIT

_CONTROL_COLUMNS = "kind, paused_at, rate_starts, rate_period_ms"


@dataclass(frozen=True)
class KindControl:
    kind: str
    paused_at: datetime | None = None
    rate_starts: int | None = None
    rate_period_ms: int | None = None
    # Tasks of the kind held for its pause or its rate limit.
    waiting: int = 0


async def _waiting(conn: asyncpg.Connection | asyncpg.Pool, kinds: list[str] | None) -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT kind, count(*) AS n FROM tasks WHERE held AND status = 1 AND wait_reason IN ($1, $2) "
        "AND ($3::text[] IS NULL OR kind = ANY($3::text[])) GROUP BY kind",
        RATE_LIMIT,
        KIND_PAUSED,
        kinds,
    )
    return {r["kind"]: r["n"] for r in rows}


def _control(row: asyncpg.Record | None, kind: str, waiting: int) -> KindControl:
    if row is None:
        return KindControl(kind, waiting=waiting)
    return KindControl(row["kind"], row["paused_at"], row["rate_starts"], row["rate_period_ms"], waiting)


async def list_controls(pool: asyncpg.Pool, served: Iterable[str]) -> list[KindControl]:
    """Every kind with a control, a waiting task or a worker serving it (`served`), sorted by kind."""
    rows = {r["kind"]: r for r in await pool.fetch(f"SELECT {_CONTROL_COLUMNS} FROM kind_controls")}
    waiting = await _waiting(pool, None)
    kinds = sorted(set(rows) | set(waiting) | set(served))
    return [_control(rows.get(kind), kind, waiting.get(kind, 0)) for kind in kinds]


async def _get(conn: asyncpg.Connection, kind: str) -> KindControl:
    row = await conn.fetchrow(f"SELECT {_CONTROL_COLUMNS} FROM kind_controls WHERE kind = $1", kind)
    return _control(row, kind, (await _waiting(conn, [kind])).get(kind, 0))


async def pause(pool: asyncpg.Pool, kind: str) -> KindControl:
    """Pause the kind; returns once no start can miss the pause (a paused kind stays paused since its first pause)."""
    async with pool.acquire() as conn:
        async with conn.transaction():
            # Waits for the starts holding the lock shared; those that come later wait for this commit.
            await conn.execute("SELECT pg_advisory_xact_lock(rt_kind_lock($1))", kind)
            await conn.execute(
                "INSERT INTO kind_controls (kind, paused_at) VALUES ($1, now()) "
                "ON CONFLICT (kind) DO UPDATE SET paused_at = coalesce(kind_controls.paused_at, now())",
                kind,
            )
        return await _get(conn, kind)


async def _unhold_kind(conn: asyncpg.Connection, kind: str, reason: int) -> None:
    """Hand every task of the kind held for `reason` back to the slot share."""
    await conn.execute(
        "SELECT rt_unhold(array_agg(id)) FROM tasks WHERE kind = $1 AND held AND status = 1 AND wait_reason = $2",
        kind,
        reason,
    )


async def resume(pool: asyncpg.Pool, kind: str) -> KindControl:
    async with pool.acquire() as conn:
        async with conn.transaction():
            await conn.execute("UPDATE kind_controls SET paused_at = NULL WHERE kind = $1", kind)
            await _unhold_kind(conn, kind, KIND_PAUSED)
        return await _get(conn, kind)


async def set_rate_limit(pool: asyncpg.Pool, kind: str, starts: int, period_ms: int) -> KindControl:
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO kind_controls (kind, rate_starts, rate_period_ms) VALUES ($1, $2, $3) "
            "ON CONFLICT (kind) DO UPDATE SET rate_starts = $2, rate_period_ms = $3",
            kind,
            starts,
            period_ms,
        )
        return await _get(conn, kind)


async def clear_rate_limit(pool: asyncpg.Pool, kind: str) -> KindControl:
    async with pool.acquire() as conn:
        async with conn.transaction():
            await conn.execute(
                "UPDATE kind_controls SET rate_starts = NULL, rate_period_ms = NULL WHERE kind = $1", kind
            )
            await _unhold_kind(conn, kind, RATE_LIMIT)
        return await _get(conn, kind)


# -- the operator role -----------------------------------------------------------------------------------
async def is_operator(pool: asyncpg.Pool, user_id: str) -> bool:
    return bool(await pool.fetchval("SELECT operator FROM users WHERE id = $1::uuid", user_id))


async def set_operator(pool: asyncpg.Pool | asyncpg.Connection, email: str, operator: bool) -> bool:
    """Grant or revoke the role of the user with this (normalized) email; False when there is no such user."""
    done = await pool.fetchval("UPDATE users SET operator = $2 WHERE email = $1 RETURNING true", email, operator)
    return bool(done)
