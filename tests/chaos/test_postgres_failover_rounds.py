"""The longer PostgreSQL failover run (`make chaos`): several failovers in a row under load, on a stack of its own.

As tests/integration/test_postgres_failover.py, with production timings (a worker's work is reclaimed after 10 s
of silence) and more rounds: each round fails the primary (its postmaster killed, or its whole server at once,
alternately), promotes the standby, then rebuilds the failed server as the new synchronous standby, while clients
keep submitting. Afterwards nothing acknowledged is lost and no task ran twice. The CI profile leaves it to the
integration test, which fails over twice.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from resilienttask import AsyncClient, RetryPolicy
from services.stack.ports import free_port
from services.stack.postgres_replica import ReplicatedPostgres, crash, start_replicated
from services.stack.stack import Stack
from tests.chaos.profile import ChaosProfile
from tests.conftest import unique_email
from tests.helpers import eventually
from tests.integration.failover_load import Load, check_nothing_lost_nothing_twice, service_pids, stack_config

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(900)]

# Failovers per profile; 0: not run in that profile.
ROUNDS = {"ci": 0, "long": 8}
SUBMITTERS = 4
ACKED_PER_ROUND = 200
PASSWORD = "correct horse battery"


@pytest.fixture
def rounds(chaos_profile: ChaosProfile) -> int:
    count = ROUNDS.get(chaos_profile.name, 0)
    if not count:
        pytest.skip(f"the {chaos_profile.name} profile leaves failovers to tests/integration/test_postgres_failover.py")
    return count


@pytest.fixture
def replicated(rounds: int) -> Iterator[ReplicatedPostgres]:
    data_dir = Path(tempfile.mkdtemp(prefix="rtask-pg-ha-chaos-"))
    pair = start_replicated(data_dir, [free_port(), free_port()], log_dir=data_dir / "logs")
    try:
        yield pair
    finally:
        pair.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def ha_stack(
    replicated: ReplicatedPostgres, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Stack]:
    """Production timings; its own Valkey (the stack starts one when given none)."""
    config = stack_config(tmp_path_factory.mktemp("pg-ha-chaos"), replicated.url, None, {"RTASK_RETRY_BASE_MS": "200"})
    echo = sys.stderr if request.config.getoption("--keep-logs") else None
    with Stack(config, echo=echo) as running:
        yield running


async def test_failover_after_failover_under_load(
    ha_stack: Stack, replicated: ReplicatedPostgres, rounds: int, tmp_path: Path
) -> None:
    services_before = service_pids(ha_stack)
    load = Load(tmp_path / "runs.log")
    async with AsyncClient(ha_stack.edge_address, retry=RetryPolicy(attempts=1), timeout=30) as client:
        await client.signup(unique_email("failover"), PASSWORD)
        submitters = [asyncio.create_task(load.submitter(client)) for _ in range(SUBMITTERS)]
        try:
            await eventually(lambda: load.at_least(ACKED_PER_ROUND), timeout_s=60, message="submissions before")
            for round_ in range(1, rounds + 1):
                primary = replicated.primary
                crashed = partial(crash, primary)
                fault, what = (primary.kill, "postmaster killed") if round_ % 2 else (crashed, "server crashed")
                await load.fail_over(replicated, fault, f"round {round_}: {what}", ACKED_PER_ROUND)
                await asyncio.to_thread(replicated.add_standby)
        finally:
            load.stop.set()
            await asyncio.gather(*submitters)
    assert service_pids(ha_stack) == services_before
    assert all(ha_stack.processes[name].alive() for name in services_before)
    await check_nothing_lost_nothing_twice(load, replicated.url)
