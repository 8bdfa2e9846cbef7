"""What the database acknowledges survives a failover: checked on a primary and its synchronous standby alone.

The standby is made to lag on purpose (the primary's WAL sender paused), then the primary's server is killed and
the standby promoted. A change the database acknowledged before the kill, whose event may have gone out, must be
on the promoted standby; a change still waiting for the standby was never acknowledged, so nobody was told of it.
The full-stack failover under load is in test_postgres_failover.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from resilienttask.v1 import task_pb2
from services.core.config import DatabaseConfig
from services.core.db import create_pool
from services.core.errors import DATABASE_ERRORS
from services.core.transitions.sweeps import record_progress
from services.stack.ports import free_port
from services.stack.postgres_replica import ReplicatedPostgres, children_of, crash, start_replicated
from tests.helpers import eventually
from tests.integration.test_transitions import new_task

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def replicated() -> Iterator[ReplicatedPostgres]:
    data_dir = Path(tempfile.mkdtemp(prefix="rtask-pg-ha-db-"))
    pair = start_replicated(data_dir, [free_port(), free_port()], log_dir=data_dir / "logs")
    try:
        yield pair
    finally:
        pair.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
async def pool(replicated: ReplicatedPostgres) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(DatabaseConfig(replicated.url, pool_min_size=1, pool_max_size=2))
    try:
        yield pool
    finally:
        pool.terminate()


def _wal_sender(replicated: ReplicatedPostgres) -> int:
    for pid in children_of(replicated.primary.pid):
        with contextlib.suppress(OSError):
            if b"walsender" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
    raise AssertionError("the primary has no WAL sender")


async def test_a_progress_change_acknowledged_before_a_failover_is_on_the_promoted_standby(
    replicated: ReplicatedPostgres, pool: asyncpg.Pool
) -> None:
    task_id = await new_task(pool, task_pb2.TASK_STATUS_RUNNING)
    await pool.execute("UPDATE tasks SET fence = 7, worker_id = 'w' WHERE id = $1", task_id)
    admin = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{replicated.primary_port}/postgres")
    sender = _wal_sender(replicated)
    os.kill(sender, signal.SIGSTOP)  # the standby receives nothing more, as over a stalled link
    try:
        progress = asyncio.create_task(record_progress(pool, {(task_id, 7, "w"): 0.5}))

        async def acknowledged_or_waiting_for_the_standby() -> bool:
            waiting = await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'")
            return progress.done() or waiting > 0

        await eventually(acknowledged_or_waiting_for_the_standby, message="the progress commit settles")
        told = progress.done() and progress.exception() is None and bool(progress.result())
        await asyncio.to_thread(crash, replicated.primary)
    finally:
        await admin.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(sender, signal.SIGCONT)
    with contextlib.suppress(*DATABASE_ERRORS):
        await progress  # cut by the crash when it was still waiting
    await asyncio.to_thread(replicated.promote_standby)
    reader = await asyncpg.connect(replicated.url)
    try:
        stored = await reader.fetchval("SELECT progress FROM tasks WHERE id = $1", task_id)
    finally:
        await reader.close()
    # Told means an event with this progress (and its version) may have gone out: the change must have survived.
    assert not told or stored == 0.5, f"acknowledged progress lost in the failover (now {stored})"
    assert not told, "the commit was acknowledged before the standby had it"
