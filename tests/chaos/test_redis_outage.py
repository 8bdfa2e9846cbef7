"""A task that finishes while the Redis-compatible server is down: its watcher must still learn the outcome.

Known issue, kept out of CI's pass/fail by a strict xfail until it is fixed: change events are published to
Redis after the commit, and a publish that fails is only logged ("change events lost",
services/core/outbox.py). A watcher that stays connected through the outage (or resumes with its token
afterwards) replays the owner's history, which never received the event, so it keeps showing the task
RUNNING although the database says SUCCEEDED. A snapshot would carry the truth, but nothing triggers one.
"""

from __future__ import annotations

import asyncio
import signal

import asyncpg
import pytest

from services.core.task_model import RUNNING, SUCCEEDED
from services.stack.stack import Stack
from tests.chaos.load import signup_users
from tests.chaos.watchers import RawWatcher
from tests.helpers import eventually

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(300)]


@pytest.mark.xfail(
    strict=True,
    reason="events of changes committed while Redis is down are dropped (outbox.emit only logs the failure), "
    "so watchers never see them",
)
async def test_a_watcher_learns_of_a_task_that_finished_while_redis_was_down(chaos_stack: Stack) -> None:
    stack = chaos_stack
    (client,), (user_id,) = await signup_users(stack.edge_address, 1)
    watcher = RawWatcher(stack.edge_address, client.token or "", user_id)
    pool = await asyncpg.create_pool(stack.database_url, min_size=1, max_size=2)
    try:
        watcher.start()
        await asyncio.wait_for(watcher.first_message.wait(), 60)
        (task,) = await client.submit("outage", workload=5)

        async def status_and_version() -> tuple[int, int]:
            row = await pool.fetchrow("SELECT status, version FROM tasks WHERE id = $1", task.id)
            assert row is not None
            return row["status"], row["version"]

        async def running_and_watched() -> bool:
            status, version = await status_and_version()
            return status == RUNNING and watcher.log.known_version(task.id) >= version

        await eventually(running_and_watched, timeout_s=60, message="the watcher sees the task running")
        await asyncio.to_thread(stack.processes["valkey"].stop, 30, signal.SIGTERM)
        try:

            async def finished() -> bool:
                return (await status_and_version())[0] == SUCCEEDED

            await eventually(finished, timeout_s=60, interval_s=0.2, message="the task succeeded during the outage")
        finally:
            await asyncio.to_thread(stack.relaunch, "valkey")
        final_version = (await status_and_version())[1]

        async def watched() -> bool:
            return watcher.log.known_version(task.id) >= final_version

        await eventually(watched, timeout_s=60, interval_s=0.2, message="the watcher learns the task succeeded")
    finally:
        await watcher.close()
        await pool.close()
        await client.close()
