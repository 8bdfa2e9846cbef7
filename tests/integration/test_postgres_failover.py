"""PostgreSQL failover under load, on the full stack through Envoy (docs/postgresql-ha.md).

The stack's DATABASE_URL names a primary and its synchronous streaming standby
(`postgresql://...@h1:p1,h2:p2/db?target_session_attrs=read-write`). While clients submit a steady stream of short
tasks, the primary is killed (SIGKILL to its whole process group, as a machine dies) and the standby promoted
(`pg_ctl promote`). The services, never restarted, find the new primary through the same URL; the calls caught in
the switch are answered UNAVAILABLE (never INTERNAL) and retried with their request_id. Afterwards every submission
a client saw acknowledged exists once, and every task ran exactly once (as its body recorded) and succeeded.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import grpc
import pytest
import redis

from resilienttask import AsyncClient, ResilientTaskError, RetryPolicy
from services.core.limits import UserLimits
from services.core.task_model import SUCCEEDED, TERMINAL
from services.stack.ports import free_port
from services.stack.postgres_replica import ReplicatedPostgres, crash, start_replicated
from services.stack.stack import Stack, StackConfig
from tests.conftest import TEST_BCRYPT_COST, TEST_RECLAIM_IDLE_MS, Stores, unique_email
from tests.helpers import eventually
from tests.integration.failover_handler import RECORDED_KIND
from tests.integration.gated_handler import runs
from tests.integration.test_user_limits import on_database
from tests.limits import OPEN_AUTH_LIMITS, OPEN_LOGIN_ENV

REDIS_DB = 14
PASSWORD = "correct horse battery"
SUBMITTERS = 4
# Between one acknowledged submission and the next of one submitter: a steady stream (about 4 x 25 a second),
# well under what 2 workers x 8 slots run, so the queue stays short and every task ends soon after.
PACE_S = 0.04
TASK_SLEEP_S = 0.05
ACKED_BEFORE = 80  # acknowledged submissions before the primary is killed
ACKED_AFTER = 80  # and after the standby was promoted
# What a client may be told during the switch: retry later. Anything else (INTERNAL above all) is a failure.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})


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
    config = StackConfig(
        data_dir=tmp_path_factory.mktemp("pg-ha-stack"),
        edge_port=0,
        edge_tls_port=0,
        admin_port=0,
        gateways=2,
        schedulers=1,
        workers=2,
        worker_slots=8,
        database_url=replicated.url,
        redis_access=redis_access,
        bcrypt_cost=TEST_BCRYPT_COST,
        limits=UserLimits(submit_burst=5_000),
        extra_env={
            "RTASK_LOG_LEVEL": os.environ.get("RTASK_LOG_LEVEL", "INFO"),
            "RTASK_RETRY_BASE_MS": "100",
            # The test reclaim threshold (3 s), shorter than production's: a switch that stalled the workers' reports
            # long enough to hand their work to another worker would show here as a task run twice.
            "RTASK_WORKER_RECLAIM_IDLE_MS": str(TEST_RECLAIM_IDLE_MS),
            "RTASK_WORKER_HEARTBEAT_MS": "500",
            "RTASK_WORKER_IMPORTS": "tests.integration.failover_handler",
            **OPEN_LOGIN_ENV,
        },
        auth_limits=OPEN_AUTH_LIMITS,
    )
    echo = sys.stderr if request.config.getoption("--keep-logs") else None
    with Stack(config, echo=echo) as running:
        yield running


@dataclass
class Load:
    """What the clients saw: each acknowledged submission (request id -> task id, when), and every error code."""

    acked: dict[str, str] = field(default_factory=dict)
    acked_at: list[float] = field(default_factory=list)
    errors: Counter[grpc.StatusCode] = field(default_factory=Counter)
    stop: asyncio.Event = field(default_factory=asyncio.Event)


async def _submitter(client: AsyncClient, log: Path, load: Load) -> None:
    """Submit one task at a time until told to stop; a call answered UNAVAILABLE is repeated, same request_id."""
    while not load.stop.is_set():
        request_id = str(uuid.uuid4())
        while True:
            try:
                (task,) = await client.submit(
                    "failover",
                    kind=RECORDED_KIND,
                    payload={"log": str(log), "sleep_s": TASK_SLEEP_S},
                    max_attempts=3,
                    request_id=request_id,
                )
                break
            except ResilientTaskError as exc:
                load.errors[exc.code] += 1
                if exc.code not in RETRYABLE:
                    raise
                await asyncio.sleep(0.1)  # the client's own backoff before repeating the call
        load.acked[request_id] = task.id
        load.acked_at.append(time.monotonic())
        await asyncio.sleep(PACE_S)


def _service_pids(stack: Stack) -> dict[str, int]:
    return {name: proc.pid for name, proc in stack.processes.items() if name.split("-")[0] in ("gateway", "scheduler")}


async def _fail_over(load: Load, replicated: ReplicatedPostgres, fault: Callable[[], None], what: str) -> None:
    """Fault the primary, promote the standby, and wait until the clients' submissions flow again."""
    before = len(load.acked)
    killed_at = time.monotonic()
    await asyncio.to_thread(fault)
    await asyncio.to_thread(replicated.promote_standby)
    promoted_at = time.monotonic()
    await eventually(lambda: _at_least(load, before + ACKED_AFTER), timeout_s=60, message=f"submissions after {what}")
    gaps = [b - a for a, b in itertools.pairwise(load.acked_at[before - 1 :])]
    print(
        f"\n{what}: standby promoted {promoted_at - killed_at:.2f} s after the kill; longest wait between two"
        f" acknowledgements {max(gaps):.2f} s; errors seen so far {dict(load.errors)}"
    )


async def test_promoting_the_standby_under_load_loses_nothing_and_runs_nothing_twice(
    ha_stack: Stack, replicated: ReplicatedPostgres, tmp_path: Path
) -> None:
    log = tmp_path / "runs.log"
    services_before = _service_pids(ha_stack)
    load = Load()
    async with AsyncClient(ha_stack.edge_address, retry=RetryPolicy(attempts=1), timeout=30) as client:
        await client.signup(unique_email("failover"), PASSWORD)
        submitters = [asyncio.create_task(_submitter(client, log, load)) for _ in range(SUBMITTERS)]
        try:
            await eventually(lambda: _at_least(load, ACKED_BEFORE), timeout_s=60, message="submissions before")
            # kill -9 of the primary's postmaster: its sessions end with a FATAL error as their backends notice.
            await _fail_over(load, replicated, replicated.primary.kill, "postmaster killed")
            # The failed server rebuilt as the new standby (under load), then the new primary's machine lost:
            # every process of it gone at once, sessions cut mid-statement.
            await asyncio.to_thread(replicated.add_standby)
            primary = replicated.primary
            await _fail_over(load, replicated, lambda: crash(primary), "server crashed")
        finally:
            load.stop.set()
            await asyncio.gather(*submitters)
    assert set(load.errors) <= RETRYABLE

    # The services were not restarted: the same processes, still up, reached each new primary themselves.
    assert _service_pids(ha_stack) == services_before
    assert all(ha_stack.processes[name].alive() for name in services_before)

    conn = await asyncpg.connect(replicated.url)
    try:
        assert not await conn.fetchval("SELECT pg_is_in_recovery()"), "the URL leads to the promoted standby"
        task_ids = list(load.acked.values())

        async def all_ended() -> list[asyncpg.Record] | None:
            rows = await conn.fetch("SELECT id, status, attempt FROM tasks WHERE id = ANY($1::uuid[])", task_ids)
            return rows if len(rows) == len(task_ids) and all(r["status"] in TERMINAL for r in rows) else None

        rows = await eventually(all_ended, timeout_s=60, interval_s=0.2, message="every acknowledged task ended")
        # Every acknowledged submission is there once: a repeated call returned its first tasks, made none anew.
        per_request = await conn.fetch(
            "SELECT request_id, count(*) AS n FROM tasks WHERE request_id = ANY($1::text[]) GROUP BY request_id",
            list(load.acked),
        )
    finally:
        await conn.close()
    assert {r["request_id"]: r["n"] for r in per_request} == dict.fromkeys(load.acked, 1)
    assert {str(r["id"]) for r in rows} == set(task_ids)
    unexpected = [dict(r) for r in rows if r["status"] != SUCCEEDED or r["attempt"] != 1]
    assert not unexpected, unexpected

    # Each task's body ran exactly once, as the bodies themselves recorded.
    recorded = runs(log)
    starts = Counter(task_id for what, task_id, _, _ in recorded if what == "start")
    ends = Counter(task_id for what, task_id, _, _ in recorded if what == "end")
    assert starts == ends == Counter(task_ids)


async def _at_least(load: Load, n: int) -> bool:
    return len(load.acked) >= n
