"""PostgreSQL notifications that wake a sleeping loop: the database tells it that something changed."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

log = logging.getLogger(__name__)


async def listen_forever(pool: asyncpg.Pool, channel: str, wake: asyncio.Event, check_interval_s: float = 5.0) -> None:
    """Set `wake` at every notification on `channel`, for as long as the caller runs.

    Holds one pooled connection, checked now and then so a broken one is replaced; `wake` is also set on every
    (re)connection, since whatever was notified while nobody listened is missed. The listener is removed before
    the connection goes back (pooled sessions carry no LISTEN state).
    """

    def on_notify(*_: object) -> None:
        wake.set()

    while True:
        try:
            async with pool.acquire() as conn:
                await conn.add_listener(channel, on_notify)
                try:
                    wake.set()
                    while True:
                        await asyncio.sleep(check_interval_s)
                        await conn.fetchval("SELECT 1")
                finally:
                    with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                        await conn.remove_listener(channel, on_notify)
        except Exception as exc:  # whatever broke the connection, listening must resume
            log.warning("notification listener lost; reconnecting", extra={"channel": channel, "error": repr(exc)})
            await asyncio.sleep(check_interval_s)
