"""The asyncpg pool, the versioned SQL migrations (applied once under an advisory lock), and listening to
notifications from the database."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

import asyncpg

from services.core.config import DatabaseConfig
from services.core.errors import DATABASE_ERRORS

log = logging.getLogger(__name__)

# Any constant works; it only has to be the same in every process that migrates this database.
MIGRATION_LOCK_ID = 0x7274_6173_6B01
_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True)
class Migration:
    """One SQL file under services/core/migrations, applied in version order."""

    version: int
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    """Read the migration files bundled with the package, sorted by version."""
    found: list[Migration] = []
    for entry in resources.files("services.core.migrations").iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration versions: {versions}")
    return found


async def migrate(conn: asyncpg.Connection) -> list[int]:
    """Apply pending migrations; returns the versions this call applied.

    The session advisory lock makes concurrent starters queue up: the first applies,
    the others find the versions recorded and apply nothing.
    """
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        applied: list[int] = []
        for migration in load_migrations():
            if migration.version in done:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
            log.info("applied migration", extra={"migration": migration.name})
            applied.append(migration.version)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)


async def create_pool(config: DatabaseConfig, *, run_migrations: bool = True) -> asyncpg.Pool:
    """Open the pool, migrating first so no query ever sees an old schema."""
    if run_migrations:
        conn = await asyncpg.connect(
            config.direct_url or config.url,
            statement_cache_size=config.statement_cache_size,
            timeout=config.connect_timeout_ms / 1000,
        )
        try:
            await migrate(conn)
        finally:
            await conn.close()
    pool = await asyncpg.create_pool(
        config.url,
        min_size=config.pool_min_size,
        max_size=config.pool_max_size,
        reset=_end_open_transaction,
        statement_cache_size=config.statement_cache_size,
        command_timeout=config.command_timeout_ms / 1000,
        timeout=config.connect_timeout_ms / 1000,
    )
    assert pool is not None
    return pool


async def _end_open_transaction(conn: asyncpg.Connection) -> None:
    """Reset on release without the default reset query's round trip on every query.

    Our pooled sessions keep no state beyond a transaction (no LISTEN, no session SET, no advisory lock:
    migrations run on their own connection), so the only thing a released connection may carry over is a
    transaction left open, which is rolled back.
    """
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


async def database_reachable(pool: asyncpg.Pool, timeout_s: float = 1.0) -> bool:
    """True when a trivial query answers within the timeout."""
    try:
        async with pool.acquire(timeout=timeout_s) as conn:
            await conn.fetchval("SELECT 1", timeout=timeout_s)
        return True
    except DATABASE_ERRORS:
        return False


def _setter(event: asyncio.Event) -> Callable[[object], None]:
    return lambda _conn: event.set()


async def listen_forever(
    pool: asyncpg.Pool,
    channel: str,
    on_notify: Callable[[str], None],
    on_listening: Callable[[], None],
    check_interval_s: float = 5.0,
    relisten_delay_s: float = 0.5,
) -> None:
    """Call on_notify(payload) for every notification on `channel`, for as long as the caller runs this.

    Holds one pooled connection, checked now and then so a broken one is replaced; a connection the server cut
    (a restart, or a failover: the pool then reaches whichever server is the primary now) is replaced at once.
    on_listening() is called each time listening (re)starts, since whatever was notified while nobody listened is
    lost. The listener is removed before the connection goes back (pooled sessions carry no LISTEN state).
    """

    def deliver(_conn: object, _pid: int, _channel: str, payload: str) -> None:
        on_notify(payload)

    while True:
        try:
            async with pool.acquire() as conn:
                lost = asyncio.Event()
                on_lost = _setter(lost)
                conn.add_termination_listener(on_lost)
                await conn.add_listener(channel, deliver)
                try:
                    on_listening()
                    while True:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(lost.wait(), check_interval_s)
                        await conn.fetchval("SELECT 1")  # raises when the connection is gone
                finally:
                    conn.remove_termination_listener(on_lost)
                    with contextlib.suppress(*DATABASE_ERRORS):
                        await conn.remove_listener(channel, deliver)
        except Exception as exc:  # whatever broke the connection, listening must resume
            log.warning("listener lost; reconnecting", extra={"channel": channel, "error": repr(exc)})
            await asyncio.sleep(relisten_delay_s)
