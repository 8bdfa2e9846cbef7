"""A Valkey Cluster primary cut from its replica while both keep running (the replication link stalls through a
loopback proxy, the cluster bus and every client still reach both), first healed as it was, then with the cut-off
replica promoted over its primary, which loses every write the replica had not received.

The primary cut off is the one serving the dispatch streams of the task kind. Every slot of the 2 workers is taken
by a long task before the cut; the tasks submitted during it wait in the stream, so their entries are among the
writes the promotion loses. PostgreSQL is the source of truth: the scheduler's lost-entry sweep publishes those
tasks again. The task bodies record their own runs (tests/integration/partition_handler.py): no task runs on two
workers at once, and every task ends exactly once, in its committed history.

The longer variant (chaos marker: `pytest -m chaos tests/integration/test_cluster_partitions.py`) cuts every
primary from its replica for twice the reclaim idle time, then promotes every replica at once: the heartbeats the
schedulers recorded, the holders' reports and the dispatch entries' idle times all go back to before the cut, so
a healthy worker's entries look abandoned and their holder silent until its next heartbeat is recorded. Taken over
on that first look, a task ran on two workers for half a second (services/scheduler/takeover.py now waits for a
second look).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from resilienttask import AsyncClient, Task, TaskStatus
from services.core import keys, redis_acl
from services.core.limits import UserLimits
from services.stack.redis_users import logins, password_files, write_acl_file
from services.stack.stack import Stack, StackConfig
from services.stack.valkey_cluster import (
    ValkeyCluster,
    cluster_state,
    primary_of,
    replicate_through,
    replication_offsets,
    role_of,
    start_cluster,
    take_over,
)
from tests.conftest import TEST_BCRYPT_COST, Stores, unique_email
from tests.databases import create_database
from tests.helpers import eventually
from tests.integration.partition_handler import KIND, overlap_s, runs
from tests.integration.partitioned_stack import terminal_transitions_in
from tests.limits import OPEN_AUTH_LIMITS, OPEN_LOGIN_ENV
from tests.partition_proxy import Link, PartitionProxies

PASSWORD = "correct horse battery"
WORKERS, SLOTS = 2, 4
# The partition tests' timings (tests/integration/test_partitions.py), so a cut as long as a reclaim idle time
# plays out in seconds; a lost dispatch entry is found missing after 3 s.
TIMINGS = {
    "RTASK_WORKER_RECLAIM_IDLE_MS": "3000",
    "RTASK_WORKER_HEARTBEAT_MS": "500",
    "RTASK_WORKER_OUTAGE_GRACE_MS": "1500",
    "RTASK_WORKER_CANCEL_GRACE_MS": "300",
    "RTASK_LOST_ENTRY_AGE_S": "3",
    "RTASK_LOST_ENTRY_CHECK_S": "1",
}
# The tasks that hold every slot: still running when the promoted replica takes over (about 5 s in), so the tasks
# submitted during the cuts wait in the stream.
LONG_S = 10.0
SHORT_S = 0.2
# How long each cut lasts before it heals or the replica takes over: longer than a heartbeat (refreshes and
# heartbeats written to the primary alone), shorter than the reclaim idle time.
CUT_S = 1.5


@dataclass
class CutCluster:
    cluster: ValkeyCluster
    stack: Stack
    database_url: str
    runs_dir: Path
    # Each primary's replication link (to its replica), in the order of cluster.primaries; the index of the primary
    # serving KIND's dispatch streams.
    links: list[Link]
    victim: int


@pytest.fixture
def cut_cluster(
    stores: Stores, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[CutCluster]:
    data_dir = tmp_path_factory.mktemp("cut-cluster")
    passwords = password_files(data_dir)
    cluster = start_cluster(
        data_dir / "valkey",
        acl_file=write_acl_file(data_dir, passwords),
        admin_user=redis_acl.USERS[redis_acl.ADMIN].name,
        admin_password=passwords[redis_acl.ADMIN].read_text().strip(),
        log_dir=data_dir / "logs",
    )
    # Outside pytest's temp root (mode 0700): a handler in a child process runs as an unprivileged user.
    runs_dir = Path(tempfile.mkdtemp(prefix="rtask-cluster-runs-"))
    runs_dir.chmod(0o777)
    try:
        with PartitionProxies() as proxies:
            victim = primary_of(cluster, keys.CLUSTER.dispatch_stream(KIND))
            links = [proxies.link(f"replication-{i}", "127.0.0.1", p.port) for i, p in enumerate(cluster.primaries)]
            for index, each in enumerate(links):
                replicate_through(cluster, index, each.port)
            seed = cluster.primaries[(victim + 1) % len(cluster.primaries)]
            database_url = asyncio.run(create_database(stores.database_url, "cut_cluster"))
            config = StackConfig(
                data_dir=data_dir / "stack",
                edge_port=0,
                edge_tls_port=0,
                admin_port=0,
                gateways=1,
                workers=WORKERS,
                worker_slots=SLOTS,
                database_url=database_url,
                redis_access=logins(passwords, "127.0.0.1", seed.port, cluster=True),
                bcrypt_cost=TEST_BCRYPT_COST,
                extra_env={
                    "RTASK_LOG_LEVEL": os.environ.get("RTASK_LOG_LEVEL", "INFO"),
                    "RTASK_RETRY_BASE_MS": "100",
                    "RTASK_WORKER_IMPORTS": "tests.integration.partition_handler",
                    **TIMINGS,
                    **getattr(request, "param", {}),
                    **OPEN_LOGIN_ENV,
                },
                # No share of the slots held back: tasks submitted during a cut wait in the stream, not in PostgreSQL.
                limits=UserLimits.unlimited(),
                auth_limits=OPEN_AUTH_LIMITS,
            )
            echo = sys.stderr if request.config.getoption("--keep-logs") else None
            with Stack(config, echo=echo) as stack:
                try:
                    yield CutCluster(cluster, stack, database_url, runs_dir, links, victim)
                finally:
                    proxies.resume_all()  # the stack stops cleanly
    finally:
        cluster.stop()
        shutil.rmtree(runs_dir, ignore_errors=True)


async def test_a_primary_cut_from_its_replica_healed_or_replaced_loses_no_task_and_runs_none_twice(
    cut_cluster: CutCluster,
) -> None:
    cluster, victim = cut_cluster.cluster, cut_cluster.victim
    link = cut_cluster.links[victim]
    replica = cluster.replicas[victim]
    payload = {"dir": str(cut_cluster.runs_dir)}
    async with AsyncClient(cut_cluster.stack.edge_address) as user:
        await user.signup(unique_email("cut-cluster"), PASSWORD)

        async def submit(n: int, workload_s: float) -> list[Task]:
            return await user.submit("cut", kind=KIND, payload=payload, workload=workload_s, replicas=n)

        long = await submit(WORKERS * SLOTS, LONG_S)
        await eventually(lambda: _running(cut_cluster.runs_dir, long), message="every slot runs a long task")

        # The cut heals with the primary still in charge: the replica receives what it missed.
        link.stall()
        try:
            healed = await submit(4, SHORT_S)
            await eventually(lambda: _lagging(cluster, victim), message="writes the replica does not receive")
            await asyncio.sleep(CUT_S)  # heartbeats and refreshes go to the primary alone meanwhile
        finally:
            link.resume()
        await eventually(lambda: _caught_up(cluster, victim), message="the replica catches up")

        # The cut replica is promoted: whatever it had not received is gone.
        link.stall()
        try:
            lost = await submit(6, SHORT_S)
            await eventually(lambda: _lagging(cluster, victim), message="writes the replica does not receive")
            await asyncio.sleep(CUT_S)
            await asyncio.to_thread(take_over, cluster, replica)
            await eventually(
                lambda: _is(cluster, victim, "master"), timeout_s=30, message="the cut-off replica takes over"
            )
        finally:
            link.resume()
        await eventually(lambda: _serving(cluster, victim), timeout_s=30, message="every slot served again")

        every = [*long, *healed, *lost]
        done = await user.wait(every, timeout=90)
    assert all(t.status is TaskStatus.SUCCEEDED for t in done), [(t.id, t.status, t.error) for t in done]
    found = runs(cut_cluster.runs_dir)
    print(f"\n{len(found)} runs of {len(every)} tasks, attempts {sorted({t.attempt for t in done})}")
    assert {r.task_id for r in found} == {t.id for t in every}, "every task ran"
    assert overlap_s(found) == 0, "no task ran on two workers at once"
    ids = [t.id for t in every]
    assert await terminal_transitions_in(cut_cluster.database_url, ids) == dict.fromkeys(ids, 1)
    scheduler_log = cut_cluster.stack.processes["scheduler-1"].log_path.read_text()
    assert "republishing tasks whose stream entry was lost" in scheduler_log, "the promotion lost queued entries"


async def _running(runs_dir: Path, tasks: list[Task]) -> bool:
    return {r.task_id for r in runs(runs_dir)} >= {t.id for t in tasks}


async def _lagging(cluster: ValkeyCluster, victim: int) -> bool:
    primary, replica = await asyncio.to_thread(replication_offsets, cluster, victim)
    return primary > replica


async def _caught_up(cluster: ValkeyCluster, victim: int) -> bool:
    primary, replica = await asyncio.to_thread(replication_offsets, cluster, victim)
    return primary == replica


async def _is(cluster: ValkeyCluster, victim: int, role: str) -> bool:
    return await asyncio.to_thread(role_of, cluster, cluster.replicas[victim]) == role


async def _serving(cluster: ValkeyCluster, victim: int) -> bool:
    info = await asyncio.to_thread(cluster_state, cluster, cluster.replicas[victim])
    return info.get("cluster_state") == "ok"


# Reclaim passes every 100 ms: a worker with free slots reclaims the rolled-back entries before their holder's first
# heartbeat after the failover is recorded.
@pytest.mark.chaos
@pytest.mark.parametrize("cut_cluster", [{"RTASK_WORKER_RECLAIM_INTERVAL_MS": "100"}], indirect=True)
async def test_every_primary_cut_from_its_replica_past_the_reclaim_idle_time_then_replaced(
    cut_cluster: CutCluster,
) -> None:
    cluster = cut_cluster.cluster
    payload = {"dir": str(cut_cluster.runs_dir)}
    async with AsyncClient(cut_cluster.stack.edge_address) as user:
        await user.signup(unique_email("cut-cluster"), PASSWORD)

        async def submit(n: int, workload_s: float) -> list[Task]:
            return await user.submit("cut", kind=KIND, payload=payload, workload=workload_s, replicas=n)

        long = await submit(WORKERS * SLOTS - 3, LONG_S)
        await eventually(lambda: _running(cut_cluster.runs_dir, long), message="the long tasks run")
        for link in cut_cluster.links:
            link.stall()
        try:
            short = await submit(3, SHORT_S)
            await asyncio.sleep(2 * int(TIMINGS["RTASK_WORKER_RECLAIM_IDLE_MS"]) / 1000)
            # All at once: the heartbeats, the holders' reports and the entries' idle times are rolled back together.
            await asyncio.gather(*(asyncio.to_thread(take_over, cluster, replica) for replica in cluster.replicas))
            for index in range(len(cluster.replicas)):
                await eventually(lambda index=index: _is(cluster, index, "master"), timeout_s=30, message="takeover")
        finally:
            for link in cut_cluster.links:
                link.resume()
        for index in range(len(cluster.replicas)):
            await eventually(lambda index=index: _serving(cluster, index), timeout_s=30, message="slots served")
        every = [*long, *short]
        done = await user.wait(every, timeout=90)
    found = runs(cut_cluster.runs_dir)
    print(f"\n{len(found)} runs of {len(every)} tasks, attempts {sorted(t.attempt for t in done)}")
    assert all(t.status is TaskStatus.SUCCEEDED for t in done), [(t.id, t.status, t.error) for t in done]
    assert overlap_s(found) == 0, "no task ran on two workers at once"
    ids = [t.id for t in every]
    assert await terminal_transitions_in(cut_cluster.database_url, ids) == dict.fromkeys(ids, 1)
