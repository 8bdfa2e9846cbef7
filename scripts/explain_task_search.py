"""Which index each task search uses, on one owner with many tasks: EXPLAIN (ANALYZE) of the statements
services/core/task_filters.py builds, as the gateway runs them (prepared, with parameters), both with the plan
PostgreSQL picks for the values (custom) and with the plan it would reuse for any values (generic).

Starts its own embedded PostgreSQL, applies the migrations, stores TASKS tasks of one owner (and as many of
other owners), ANALYZEs, and prints each plan's first lines and its execution time.
Usage: .venv/bin/python scripts/explain_task_search.py [tasks] [--without-indexes]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from services.core.db import migrate
from services.core.task_filters import TaskQuery, _Params, _where
from services.core.task_model import FAILED, SUCCEEDED, TASK_COLUMNS
from services.stack.embedded import postgres_process, postgres_url, wait_for_postgres
from services.stack.ports import free_port

KINDS = ("sleep", "fail", "spin", "resize", "report")


async def fill(conn: asyncpg.Connection, owner: str, tasks: int) -> None:
    """Tasks like a busy user's: names from a small vocabulary with numbers, five kinds, mostly succeeded."""
    await conn.execute("INSERT INTO users (id, email, password_hash) VALUES ($1, $2, 'x')", owner, f"{owner}@x")
    start = datetime.now(UTC) - timedelta(days=30)
    rows = []
    for i in range(tasks):
        status = FAILED if i % 50 == 0 else SUCCEEDED
        rows.append(
            (
                uuid.uuid4(),
                uuid.UUID(owner),
                f"{('nightly report', 'resize image', 'send mail', 'sync account')[i % 4]} {i}",
                KINDS[i % 13 % len(KINDS)] if i % 13 else "report",
                status,
                f"req-{i}",
                start + timedelta(seconds=i * 60),
                status == FAILED,
            )
        )
    await conn.executemany(
        "INSERT INTO tasks (id, owner_id, name, kind, status, max_attempts, request_id, batch_id, replica_index, "
        "workload_ms, max_runtime_ms, dispatch_id, created_at, dead_lettered) "
        "VALUES ($1, $2, $3, $4, $5, 3, $6, $1, 0, 0, 1000, $1, $7, $8)",
        rows,
    )


CASES: list[tuple[str, TaskQuery]] = [
    ("name contains 'account 1999' (4 match)", TaskQuery(name_contains="account 1999")),
    ("name contains 'report 12' (279 match)", TaskQuery(name_contains="report 12")),
    ("kind = 'resize'", TaskQuery(kind="resize")),
    ("id prefix (8 hex digits)", TaskQuery()),  # filled in with a real id below
    ("dead-lettered", TaskQuery(dead_lettered=True)),
    ("status failed", TaskQuery(status_sets=(frozenset({FAILED}),))),
]


async def explain(conn: asyncpg.Connection, label: str, sql: str, args: list[Any]) -> None:
    for mode in ("force_custom_plan", "force_generic_plan"):
        await conn.execute(f"SET plan_cache_mode = {mode}")
        statement = await conn.prepare(f"EXPLAIN (ANALYZE, COSTS OFF, SUMMARY ON) {sql}")
        lines = [r[0] for r in await statement.fetch(*args)]
        plan = [line.strip() for line in lines if "->" in line or not line.startswith(" ")][:4]
        took = next((line for line in lines if line.startswith("Execution Time")), "")
        print(f"{label} [{mode.split('_')[1]}] {took}")
        for line in plan:
            print(f"    {line}")


SEARCH_INDEXES = ("tasks_name_trgm", "tasks_owner_kind", "tasks_owner_schedule", "tasks_owner_dead")


async def run(url: str, tasks: int, without_indexes: bool) -> None:
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
        if without_indexes:  # the plans before migration 0012
            await conn.execute(f"DROP INDEX {', '.join(SEARCH_INDEXES)}")
        owner = str(uuid.uuid4())
        await fill(conn, owner, tasks)
        await fill(conn, str(uuid.uuid4()), tasks)
        await conn.execute("ANALYZE tasks")
        some_id = str(await conn.fetchval("SELECT id FROM tasks WHERE owner_id = $1 LIMIT 1", owner))
        print(f"{tasks} tasks of one owner, {2 * tasks} in all")
        for label, query in CASES:
            if label.startswith("id prefix"):
                digits = some_id[:8]
                query = TaskQuery(
                    id_range=(f"{digits}-0000-0000-0000-000000000000", f"{digits}-ffff-ffff-ffff-ffffffffffff")
                )
            where, params = _where(owner, query, None)
            page = _Params(params.values)
            limit = page.add(51)
            await explain(
                conn,
                f"list page: {label}",
                f"SELECT {TASK_COLUMNS} FROM tasks WHERE {where} ORDER BY created_at DESC, id DESC LIMIT {limit}",
                page.values,
            )
            await explain(conn, f"count: {label}", f"SELECT count(*) FROM tasks WHERE {where}", params.values)
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("tasks", type=int, nargs="?", default=20_000)
    parser.add_argument("--without-indexes", action="store_true", help="drop migration 0012's indexes first")
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="rtask-explain-"))
    port = free_port()
    pg = postgres_process(data_dir, port, log_dir=data_dir / "logs", echo=None)
    pg.start()
    try:
        wait_for_postgres(pg, port)
        asyncio.run(run(postgres_url(port), args.tasks, args.without_indexes))
    finally:
        pg.stop(grace_s=15, sig=signal.SIGINT)


if __name__ == "__main__":
    main()
