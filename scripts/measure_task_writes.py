"""What one no-op task (submit → publish mark → start → succeed) writes to PostgreSQL, per task.

Starts its own embedded PostgreSQL (pg_stat_statements loaded, autovacuum off so no entry is cleaned away
mid-run), drives the same store calls the gateway and the scheduler make, one task at a time, and prints
statements, rows, heap tuples (inserted / updated / HOT), index entries inserted and WAL (bytes, records
by kind, from pg_walinspect), per task.
Usage: .venv/bin/python scripts/measure_task_writes.py [tasks] [--queued-long] [--progress N]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from resilienttask.worker.v1 import worker_pb2
from services.core import task_store
from services.core.config import DatabaseConfig
from services.core.db import create_pool, migrate
from services.core.transitions import user as transitions
from services.core.transitions.sweeps import record_progress
from services.scheduler import store
from services.stack.embedded import postgres_process, postgres_url, wait_for_postgres
from services.stack.ports import free_port

TABLES = ("tasks", "task_history_stored")
WARM_UP = 50


async def wal_records(conn: asyncpg.Connection, start: int, end: int) -> dict[str, tuple[int, int]]:
    """WAL records between two positions, by kind: (count, bytes)."""
    rows = await conn.fetch(
        'SELECT "resource_manager/record_type" AS kind, count, record_size + fpi_size AS size '
        "FROM pg_get_wal_stats($1::pg_lsn, $2::pg_lsn, true) WHERE count > 0 ORDER BY count DESC",
        start,
        end,
    )
    return {r["kind"]: (r["count"], r["size"]) for r in rows}


async def snapshot(url: str) -> dict[str, int]:
    conn = await asyncpg.connect(url)
    try:
        await asyncio.sleep(1.2)  # backends flush their statistics at exit; give them the time
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        figures: dict[str, int] = {}
        for table in TABLES:
            row = await conn.fetchrow(
                "SELECT n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del FROM pg_stat_user_tables WHERE relname = $1",
                table,
            )
            assert row is not None
            for key, value in row.items():
                figures[f"{table}.{key}"] = value
        figures["wal lsn"] = int(await conn.fetchval("SELECT pg_current_wal_lsn() - '0/0'"))
        return figures
    finally:
        await conn.close()


# Submissions a gateway receives within outbox.MARK_DELAY_S, whose publication marks share one statement.
MARKS_PER_STATEMENT = 50


@dataclass(frozen=True)
class Scenario:
    queued_long: bool  # the task waited in the stream longer than outbox.MARK_DELAY_S
    progress_reports: int  # progress updates recorded while it runs


async def one_task(pool: asyncpg.Pool, owner: str, scenario: Scenario) -> tuple[str, str]:
    """Submit, start and finish one task; returns (task id, dispatch id) for its publication mark.

    The gateway marks publications MARK_DELAY_S after the dispatch, in one statement for every submission
    made meanwhile: after the start of a task a worker took at once, before the start of one that waited
    in the queue longer (queued_long, marked here at once).
    """
    spec = transitions.Submission("t", "sleep", {}, 0, 60_000, 1, 3, str(uuid.uuid4()))
    rows, _ = await transitions.submit(pool, owner, spec)
    (row,) = rows
    task_id, dispatch_id = str(row["id"]), str(row["dispatch_id"])
    if scenario.queued_long:
        await task_store.mark_published(pool, [task_id], [dispatch_id], ["sleep:1-1"])
    started = await store.start_batch(
        pool, "w", [worker_pb2.StartItem(task_id=task_id, dispatch_id=dispatch_id, entry_id="sleep:1-1")]
    )
    (result,) = started.results
    assert result.decision == worker_pb2.START_DECISION_RUN, result
    for step in range(scenario.progress_reports):
        await record_progress(pool, {(task_id, result.fence, "w"): (step + 1) / (scenario.progress_reports + 1)})
    held = worker_pb2.HeldTask(task_id=task_id, fence=result.fence)
    finished = await store.finish_batch(
        pool, "w", [worker_pb2.FinishItem(task=held, outcome=worker_pb2.OUTCOME_SUCCEEDED)], store.RetryPolicy()
    )
    assert finished.results[0].accepted, finished.results
    return task_id, dispatch_id


async def run_tasks(url: str, owner: str, count: int, scenario: Scenario) -> None:
    pool = await create_pool(DatabaseConfig(url=url, pool_min_size=1, pool_max_size=1), run_migrations=False)
    marks: list[tuple[str, str]] = []
    try:
        for _ in range(count):
            marks.append(await one_task(pool, owner, scenario))
            if not scenario.queued_long and len(marks) == MARKS_PER_STATEMENT:
                ids, dispatches = zip(*marks, strict=True)
                await task_store.mark_published(pool, ids, dispatches, ["sleep:1-1"] * len(marks))
                marks.clear()
    finally:
        await pool.close()


async def measure(url: str, count: int, scenario: Scenario) -> None:
    conn = await asyncpg.connect(url)
    await conn.execute("CREATE EXTENSION pg_stat_statements; CREATE EXTENSION pg_walinspect")
    await migrate(conn)
    owner = str(uuid.uuid4())
    await conn.execute("INSERT INTO users (id, email, password_hash) VALUES ($1, $2, 'x')", owner, f"{owner}@t.io")
    await conn.close()
    await run_tasks(url, owner, WARM_UP, scenario)
    conn = await asyncpg.connect(url)
    await conn.execute("SELECT pg_stat_statements_reset()")
    await conn.close()
    before = await snapshot(url)
    start_lsn = await _lsn(url)
    await run_tasks(url, owner, count, scenario)
    after = await snapshot(url)
    end_lsn = await _lsn(url)
    conn = await asyncpg.connect(url)
    records = await wal_records(conn, start_lsn, end_lsn)
    statements = await conn.fetch(
        "SELECT calls, rows, wal_bytes, wal_fpi, left(regexp_replace(query, '\\s+', ' ', 'g'), 90) AS q "
        "FROM pg_stat_statements WHERE query !~* 'pg_stat|pg_current_wal|pg_get_wal|pg_sleep' ORDER BY calls DESC"
    )
    await conn.close()
    when = "before" if scenario.queued_long else "after"
    print(f"per task, averaged over {count} tasks run one at a time, publication marked {when} the start, ")
    print(f"{scenario.progress_reports} progress updates:")
    calls = sum(s["calls"] for s in statements)
    print(f"  {'statements':33} {calls / count:8.2f}")
    for key in before:
        if key != "wal lsn":
            print(f"  {key:33} {(after[key] - before[key]) / count:8.2f}")
    print(f"  {'WAL bytes (lsn diff)':33} {(after['wal lsn'] - before['wal lsn']) / count:8.0f}")
    print(f"  {'WAL bytes (statements)':33} {sum(s['wal_bytes'] for s in statements) / count:8.0f}")
    inserts = sum(n for kind, (n, _) in records.items() if kind.startswith("Btree/INSERT"))
    print(f"  {'index entries inserted':33} {inserts / count:8.2f}")
    print("WAL records per task (count, bytes), by kind:")
    for kind, (n, size) in records.items():
        if n >= count / 10:
            print(f"  {n / count:6.2f} {size / count:7.0f}  {kind}")
    print("statements (calls, rows, WAL bytes, full-page images):")
    for s in statements:
        print(f"  {s['calls']:5} {s['rows']:5} {s['wal_bytes']:8} {s['wal_fpi']:4}  {s['q']}")


async def _lsn(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT pg_current_wal_lsn()"))
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("tasks", type=int, nargs="?", default=200)
    parser.add_argument("--queued-long", action="store_true", help="the publication mark lands before the start")
    parser.add_argument("--progress", type=int, default=0, help="progress updates per task")
    args = parser.parse_args()
    scenario = Scenario(args.queued_long, args.progress)
    data_dir = Path(tempfile.mkdtemp(prefix="rtask-measure-"))
    port = free_port()
    pg = postgres_process(data_dir, port, log_dir=data_dir / "logs", echo=None)
    pg.argv += ["-c", "shared_preload_libraries=pg_stat_statements", "-c", "autovacuum=off"]
    pg.argv += ["-c", "checkpoint_timeout=1h", "-c", "max_wal_size=4GB"]
    pg.start()
    try:
        wait_for_postgres(pg, port)
        asyncio.run(measure(postgres_url(port), args.tasks, scenario))
    finally:
        pg.stop(grace_s=15, sig=signal.SIGINT)


if __name__ == "__main__":
    main()
