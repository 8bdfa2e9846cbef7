"""Where bench.fairness's "on" side spends more than "off": CPU per task by process, Redis commands and PostgreSQL
transactions per task, for each side named, drained in turn.

    .venv/bin/python -m bench.fairness_parts [--rounds 2] [--drain 5000] off on gates fair priorities

Each side drains bench.fairness's no-op burst on a fresh stack sharing one embedded PostgreSQL and Valkey (as
bench.fairness does); measured from the first submission to the last SUCCEEDED: the user+system CPU seconds of each
process (our services with their children, PostgreSQL's server with its backends, Valkey), the calls of every Redis
command (INFO commandstats) and PostgreSQL's commits and row updates (pg_stat_database, pg_stat_user_tables), all
per task. CPU per task moves less with the machine's other load than the rate does. A profile, not a figure to
quote: the sides run one after the other.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import redis.asyncio as aioredis

from bench import fairness
from bench.ours import OurBench, Servers, service_pids
from bench.profiling import Profiler
from bench.run import STAMPS_DB, stores


def tree_cpu(pid: int) -> float:
    """User+system CPU seconds of a process, its live descendants and the children it reaped."""
    try:
        root = psutil.Process(pid)
        total = 0.0
        for proc in [root, *root.children(recursive=True)]:
            times = proc.cpu_times()
            total += times.user + times.system
        times = root.cpu_times()
        return total + times.children_user + times.children_system
    except psutil.Error:
        return 0.0


def listener_pid(port: int) -> int:
    """The process listening on a local TCP port (the embedded PostgreSQL's postmaster, Valkey)."""
    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            return conn.pid
    raise RuntimeError(f"nothing listens on {port}")


async def commandstats(redis: aioredis.Redis) -> dict[str, int]:
    info = await redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in info.items()}


_PG = """
SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()) AS commits,
    (SELECT sum(n_tup_upd) FROM pg_stat_user_tables WHERE relname = 'tasks') AS task_updates,
    pg_current_wal_lsn() - '0/0'::pg_lsn AS wal
"""


async def pg_counts(conn: asyncpg.Connection) -> dict[str, float]:
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    row = await conn.fetchrow(_PG)
    assert row is not None
    return {k: float(row[k] or 0) for k in ("commits", "task_updates", "wal")}


# pg_stat_statements, statements inside functions and triggers included (--statements).
STATEMENT_SETTINGS = {"shared_preload_libraries": "pg_stat_statements", "pg_stat_statements.track": "all"}
_TOP_STATEMENTS = """
SELECT calls, total_exec_time, shared_blks_hit + shared_blks_read AS blocks, rows,
    regexp_replace(left(query, 110), '\\s+', ' ', 'g') AS query
FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 14
"""


async def top_statements(pg: asyncpg.Connection, n: int) -> None:
    """The statements that took most of PostgreSQL's time since the last reset, per task; then reset."""
    for r in await pg.fetch(_TOP_STATEMENTS):
        print(f"   {r['total_exec_time'] / n * 1000:7.1f} µs/task {r['calls'] / n:6.3f} calls/task "
              f"{r['blocks'] / max(1, r['calls']):7.1f} blocks/call  {r['query']}")  # fmt: skip
    await pg.execute("SELECT pg_stat_statements_reset()")


async def drain_side(
    ours: OurBench,
    sizes: fairness.Sizes,
    side: str,
    redis: aioredis.Redis,
    pg: asyncpg.Connection,
    pids: dict[str, int],
    profiler: Profiler | None = None,
) -> dict[str, Any]:
    features = fairness.SIDES[side]
    with ours.stack(sizes.workers, sizes.slots, limits=features.limits) as stack:
        async with fairness.drain_client(ours, stack, features.gates) as client:
            procs = {**service_pids(stack), **pids}
            n = sizes.drain
            load = os.getloadavg()[0]
            cpu0 = {name: tree_cpu(pid) for name, pid in procs.items()}
            cmd0, pg0 = await commandstats(redis), await pg_counts(pg)
            first = time.time()
            with profiler.recording(side, service_pids(stack)) if profiler else contextlib.nullcontext():
                done = await fairness.drain_tasks(ours, client, features, n, side)
            cpu1 = {name: tree_cpu(pid) for name, pid in procs.items()}
            cmd1, pg1 = await commandstats(redis), await pg_counts(pg)
    cpu: dict[str, float] = collections.defaultdict(float)
    for name in procs:
        cpu[name.split("-")[0]] += (cpu1[name] - cpu0[name]) * 1000 / n
    commands = {c: (cmd1[c] - cmd0.get(c, 0)) / n for c in cmd1 if cmd1[c] != cmd0.get(c, 0)}
    return {
        "side": side,
        "load": round(load, 2),
        "rate": round(n / (done - first)),
        "cpu_ms": dict(cpu),
        "commands": commands,
        "pg": {k: (pg1[k] - pg0[k]) / n for k in pg1},
    }


def show(result: dict[str, Any]) -> None:
    cpu = result["cpu_ms"]
    print(f"== {result['side']} (load {result['load']}): {result['rate']} tasks/s; CPU ms per task: "
          + ", ".join(f"{k} {v:.3f}" for k, v in sorted(cpu.items(), key=lambda kv: -kv[1]))
          + f"; all {sum(cpu.values()):.3f}", flush=True)  # fmt: skip
    print("   pg per task: " + ", ".join(f"{k} {v:.2f}" for k, v in result["pg"].items()), flush=True)
    top = sorted(result["commands"].items(), key=lambda kv: -kv[1])
    print("   redis calls per task: " + ", ".join(f"{k} {v:.3f}" for k, v in top if v >= 0.005), flush=True)


async def run(
    servers: Servers,
    log_dir: Path,
    sizes: fairness.Sizes,
    sides: list[str],
    rounds: int,
    profile: Path | None,
    statements: bool,
) -> None:
    ours = OurBench(servers, log_dir)
    profiler = Profiler(profile) if profile is not None else None
    ours.redis_access()
    redis = aioredis.Redis.from_url(servers.redis_url)
    pg = await asyncpg.connect(servers.database_url)
    pg_port = int(servers.database_url.rsplit(":", 1)[1].split("/")[0])
    redis_port = int(servers.redis_url.rsplit(":", 1)[1].split("/")[0])
    pids = {"postgres": listener_pid(pg_port), "valkey": listener_pid(redis_port)}
    try:
        for index in range(rounds):
            for side in sides if index % 2 == 0 else reversed(sides):
                if statements:
                    await pg.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                    await pg.execute("SELECT pg_stat_statements_reset()")
                show(await drain_side(ours, sizes, side, redis, pg, pids, profiler))
                if statements:
                    await top_statements(pg, sizes.drain)
        if profiler is not None:
            for name, summary in profiler.summaries.items():
                print(f"== profile {name}: {summary.get('busy_samples')} busy samples")
                for frame, pct in summary.get("inclusive_pct", []):
                    print(f"   {pct:5.1f} %  {frame}")
    finally:
        await pg.close()
        await redis.aclose()
        await ours.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("sides", nargs="*", default=["off", "on"])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--drain", type=int, default=fairness.FULL.drain)
    parser.add_argument("--statements", action="store_true", help="print PostgreSQL's busiest statements per side")
    parser.add_argument("--profile", type=Path, help="py-spy the services into this folder (slows them: not figures)")
    args = parser.parse_args()
    unknown = [side for side in args.sides if side not in fairness.SIDES]
    if unknown:
        raise SystemExit(f"unknown sides {unknown}; known: {', '.join(fairness.SIDES)}")
    sizes = dataclasses.replace(fairness.FULL, drain=args.drain)
    data_dir = Path(tempfile.mkdtemp(prefix="rtask-fair-parts-"))
    try:
        settings = STATEMENT_SETTINGS if args.statements else None
        with stores(data_dir, data_dir / "logs", settings) as (database_url, redis_url):
            servers = Servers(database_url, f"{redis_url}/0", f"{redis_url}/{STAMPS_DB}", data_dir)
            run_args = (args.sides, args.rounds, args.profile, args.statements)
            asyncio.run(run(servers, data_dir / "logs", sizes, *run_args))
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
