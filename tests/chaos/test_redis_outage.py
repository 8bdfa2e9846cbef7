"""A task that changes while the Redis-compatible server is down: its live watcher must still learn the outcome.

Change events are appended to Redis after the commit; those Redis refuses are parked in PostgreSQL
(services/core/outbox.py) and appended by the scheduler once Redis is back, so a watcher connected
through the outage (or resuming with its token afterwards) still receives them.
"""

from __future__ import annotations

import asyncio
import signal

import asyncpg
import pytest

from services.core.task_model import CANCELLED
from services.stack.stack import Stack
from tests.chaos.load import signup_users
from tests.chaos.watchers import RawWatcher
from tests.helpers import eventually

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(300)]


async def test_a_watcher_learns_of_a_task_cancelled_while_redis_was_down(chaos_stack: Stack) -> None:
    stack = chaos_stack
    (client,), (user_id,) = await signup_users(stack.edge_address, 1)
    watcher = RawWatcher(stack.edge_address, client.token or "", user_id)
    pool = await asyncpg.create_pool(stack.database_url, min_size=1, max_size=2)
    try:
        watcher.start()
        await asyncio.wait_for(watcher.first_message.wait(), 60)
        await asyncio.to_thread(stack.processes["valkey"].stop, 30, signal.SIGTERM)
        try:
            # Both commit in PostgreSQL; their events cannot reach the stopped server.
            (task,) = await client.submit("during the outage", workload=60)
            cancelled = await client.cancel(task.id)
            assert cancelled.status.value == "cancelled"
        finally:
            await asyncio.to_thread(stack.relaunch, "valkey")
        row = await pool.fetchrow("SELECT status, version FROM tasks WHERE id = $1", task.id)
        assert row is not None and row["status"] == CANCELLED

        async def watched() -> bool:
            return watcher.log.known_version(task.id) >= row["version"]

        await eventually(watched, timeout_s=60, interval_s=0.2, message="the watcher learns the task was cancelled")
    finally:
        await watcher.close()
        await pool.close()
        await client.close()
