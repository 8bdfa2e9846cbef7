"""The load and the checks of the PostgreSQL failover tests (tests/integration/test_postgres_failover.py, and its
longer variant in tests/chaos): clients submitting a steady stream of tasks that record their own runs, failovers
under that load, and what must hold afterwards.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import grpc

from resilienttask import AsyncClient, ResilientTaskError
from services.core.limits import UserLimits
from services.core.task_model import SUCCEEDED, TERMINAL
from services.stack.postgres_replica import ReplicatedPostgres
from services.stack.redis_users import RedisAccess
from services.stack.stack import Stack, StackConfig
from tests.conftest import TEST_BCRYPT_COST
from tests.helpers import eventually
from tests.integration.failover_handler import RECORDED_KIND
from tests.integration.gated_handler import runs
from tests.limits import OPEN_AUTH_LIMITS, OPEN_LOGIN_ENV

# Between one acknowledged submission and the next of one submitter: a steady stream (about 25 a second each).
PACE_S = 0.04
SHORT_TASK_S = 0.05
# Every LONG_EVERY-th submission runs for LONG_TASK_S: tasks that are running, not only queued, when the primary
# dies, whose starts and outcomes are reported around the switch.
LONG_EVERY = 8
LONG_TASK_S = 1.0
# What a client may be told during the switch: retry later. Anything else (INTERNAL above all) is a failure.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})


def stack_config(
    data_dir: Path, database_url: str, redis_access: RedisAccess | None, extra_env: dict[str, str]
) -> StackConfig:
    """The whole system (2 gateways, 1 scheduler, 2 workers x 16 slots) on `database_url`, running the recording
    handler."""
    return StackConfig(
        data_dir=data_dir,
        edge_port=0,
        edge_tls_port=0,
        admin_port=0,
        gateways=2,
        schedulers=1,
        workers=2,
        worker_slots=16,
        database_url=database_url,
        redis_access=redis_access,
        bcrypt_cost=TEST_BCRYPT_COST,
        limits=UserLimits(submit_burst=20_000),
        extra_env={
            "RTASK_LOG_LEVEL": os.environ.get("RTASK_LOG_LEVEL", "INFO"),
            "RTASK_WORKER_IMPORTS": "tests.integration.failover_handler",
            **OPEN_LOGIN_ENV,
            **extra_env,
        },
        auth_limits=OPEN_AUTH_LIMITS,
    )


@dataclass
class Load:
    """What the clients saw: each acknowledged submission (request id -> task id, when), and every error code."""

    log: Path
    acked: dict[str, str] = field(default_factory=dict)
    acked_at: list[float] = field(default_factory=list)
    errors: Counter[grpc.StatusCode] = field(default_factory=Counter)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    _sequence: itertools.count[int] = field(default_factory=itertools.count)

    async def submitter(self, client: AsyncClient) -> None:
        """Submit one task at a time until told to stop; a call answered UNAVAILABLE is repeated, same request_id."""
        while not self.stop.is_set():
            request_id = str(uuid.uuid4())
            sleep_s = LONG_TASK_S if next(self._sequence) % LONG_EVERY == 0 else SHORT_TASK_S
            while True:
                try:
                    (task,) = await client.submit(
                        "failover",
                        kind=RECORDED_KIND,
                        payload={"log": str(self.log), "sleep_s": sleep_s},
                        max_attempts=3,
                        request_id=request_id,
                    )
                    break
                except ResilientTaskError as exc:
                    self.errors[exc.code] += 1
                    if exc.code not in RETRYABLE:
                        raise
                    await asyncio.sleep(0.1)  # the client's own backoff before repeating the call
            self.acked[request_id] = task.id
            self.acked_at.append(time.monotonic())
            await asyncio.sleep(PACE_S)

    async def at_least(self, n: int) -> bool:
        return len(self.acked) >= n

    async def fail_over(self, replicated: ReplicatedPostgres, fault: Callable[[], None], what: str, after: int) -> None:
        """Fault the primary, promote the standby, and wait until `after` more submissions were acknowledged."""
        before = len(self.acked)
        killed_at = time.monotonic()
        await asyncio.to_thread(fault)
        await asyncio.to_thread(replicated.promote_standby)
        promoted_at = time.monotonic()
        await eventually(lambda: self.at_least(before + after), timeout_s=60, message=f"submissions after {what}")
        gaps = [b - a for a, b in itertools.pairwise(self.acked_at[before - 1 :])]
        print(
            f"\n{what}: standby promoted {promoted_at - killed_at:.2f} s after the kill; longest wait between two"
            f" acknowledgements {max(gaps):.2f} s; errors seen so far {dict(self.errors)}"
        )


def service_pids(stack: Stack) -> dict[str, int]:
    """The gateways' and schedulers' process ids: the same after a failover when nothing was restarted."""
    return {name: proc.pid for name, proc in stack.processes.items() if name.split("-")[0] in ("gateway", "scheduler")}


async def check_nothing_lost_nothing_twice(load: Load, database_url: str) -> None:
    """Every acknowledged submission exists once and its task succeeded at its first attempt; each task's body
    ran exactly once, as the bodies themselves recorded; no client was told anything but UNAVAILABLE."""
    assert set(load.errors) <= RETRYABLE, load.errors
    conn = await asyncpg.connect(database_url)
    try:
        assert not await conn.fetchval("SELECT pg_is_in_recovery()"), "the URL leads to the promoted standby"
        task_ids = list(load.acked.values())

        async def all_ended() -> list[asyncpg.Record] | None:
            rows = await conn.fetch("SELECT id, status, attempt FROM tasks WHERE id = ANY($1::uuid[])", task_ids)
            return rows if len(rows) == len(task_ids) and all(r["status"] in TERMINAL for r in rows) else None

        rows = await eventually(all_ended, timeout_s=60, interval_s=0.2, message="every acknowledged task ended")
        # A repeated call returned the tasks of its first attempt and made none anew.
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
    recorded = runs(load.log)
    starts = Counter(task_id for what, task_id, _, _ in recorded if what == "start")
    ends = Counter(task_id for what, task_id, _, _ in recorded if what == "end")
    assert starts == ends == Counter(task_ids)
