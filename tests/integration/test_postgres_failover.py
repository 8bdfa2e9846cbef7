"""PostgreSQL failover under load, on the full stack through Envoy (docs/postgresql-ha.md).

The stack's DATABASE_URL names a primary and its synchronous streaming standby
(`postgresql://...@h1:p1,h2:p2/db?target_session_attrs=read-write`). While clients submit a steady stream of short
and longer tasks, the primary fails and the standby is promoted (`pg_ctl promote`), twice: first the primary's
postmaster is killed (kill -9), then, once the failed server was rebuilt as the new standby, the new primary's
whole server at once (as its machine dies). The services, never restarted, find each new primary through the same
URL; the calls caught in the switch are answered UNAVAILABLE (never INTERNAL) and retried with their request_id.
Afterwards every submission a client saw acknowledged exists once, and every task ran exactly once (as its body
recorded) and succeeded. The longer variant: tests/chaos/test_postgres_failover_rounds.py.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from resilienttask import AsyncClient, RetryPolicy
from services.stack.ports import free_port
from services.stack.postgres_replica import ReplicatedPostgres, crash, start_replicated
from services.stack.stack import Stack
from tests.conftest import TEST_RECLAIM_IDLE_MS, Stores, unique_email
from tests.helpers import eventually
from tests.integration.failover_load import Load, check_nothing_lost_nothing_twice, service_pids, stack_config
from tests.integration.test_user_limits import on_database

# A guard for the whole test, start-up of the pair and the stack included (about 65 s here); not a measure.
pytestmark = pytest.mark.timeout(300)

REDIS_DB = 14
PASSWORD = "correct horse battery"
SUBMITTERS = 4
ACKED_BEFORE = 80  # acknowledged submissions before the first fault
ACKED_AFTER = 80  # and after each promotion


@pytest.fixture(scope="module")
def replicated() -> Iterator[ReplicatedPostgres]:
    # Not under pytest's temp root, which is mode 0700: PostgreSQL runs as its own system user (tests/conftest.py).
    data_dir = Path(tempfile.mkdtemp(prefix="rtask-pg-ha-"))
    pair = start_replicated(data_dir, [free_port(), free_port()], log_dir=data_dir / "logs")
    try:
        yield pair
    finally:
        pair.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def ha_stack(
    replicated: ReplicatedPostgres,
    stores: Stores,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[Stack]:
    """The whole system on the replicated pair's multi-host URL, with a Redis database of its own."""
    redis_access = on_database(stores.redis_access, REDIS_DB)
    assert redis_access.admin is not None
    with redis.Redis.from_url(redis_access.admin.url_with_password()) as admin:
        admin.flushdb()  # what an earlier run of this module left
    # The test reclaim threshold (3 s), shorter than production's: a switch that held up the workers' reports long
    # enough to hand their work to another worker would show as a task run twice.
    timings = {
        "RTASK_RETRY_BASE_MS": "100",
        "RTASK_WORKER_RECLAIM_IDLE_MS": str(TEST_RECLAIM_IDLE_MS),
        "RTASK_WORKER_HEARTBEAT_MS": "500",
    }
    config = stack_config(tmp_path_factory.mktemp("pg-ha-stack"), replicated.url, redis_access, timings)
    echo = sys.stderr if request.config.getoption("--keep-logs") else None
    with Stack(config, echo=echo) as running:
        yield running


async def test_promoting_the_standby_under_load_loses_nothing_and_runs_nothing_twice(
    ha_stack: Stack, replicated: ReplicatedPostgres, tmp_path: Path
) -> None:
    services_before = service_pids(ha_stack)
    load = Load(tmp_path / "runs.log")
    async with AsyncClient(ha_stack.edge_address, retry=RetryPolicy(attempts=1), timeout=30) as client:
        await client.signup(unique_email("failover"), PASSWORD)
        submitters = [asyncio.create_task(load.submitter(client)) for _ in range(SUBMITTERS)]
        try:
            await eventually(lambda: load.at_least(ACKED_BEFORE), timeout_s=60, message="submissions before")
            # kill -9 of the primary's postmaster: its sessions end with a FATAL error as their backends notice.
            await load.fail_over(replicated, replicated.primary.kill, "postmaster killed", ACKED_AFTER)
            # The failed server rebuilt as the new standby (under load), then the new primary's machine lost: every
            # process of it gone at once, sessions cut mid-statement.
            await asyncio.to_thread(replicated.add_standby)
            primary = replicated.primary
            await load.fail_over(replicated, lambda: crash(primary), "server crashed", ACKED_AFTER)
        finally:
            load.stop.set()
            await asyncio.gather(*submitters)

    # The services were not restarted: the same processes, still up, reached each new primary themselves.
    assert service_pids(ha_stack) == services_before
    assert all(ha_stack.processes[name].alive() for name in services_before)
    await check_nothing_lost_nothing_twice(load, replicated.url)
