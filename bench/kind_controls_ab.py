"""What the kind controls and concurrency keys cost on the hot path when none binds: an A/B in one database.

    .venv/bin/python -m bench.kind_controls_ab [--rounds 3] [--batches 200] [--batch 50]

"on" is the start statement workers' starts run (services.core.transitions.start._FAST_START: it also calls
rt_kind_gates, a shared advisory lock per kind and a look-up of the kind's controls, and leaves keyed tasks to the
checked path) and an end statement with the concurrency-key release trigger enabled; "off" is the start statement
as it was before (the same text without the gate) and the end statement with that trigger disabled. No kind is
paused or limited and no task has a key, as in a pool that uses none of it. Batches alternate on and off (the
order flips every pair); the figures are medians of per-batch times. Printed, never asserted.
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
from pathlib import Path

import asyncpg

from services.core.config import DatabaseConfig
from services.core.db import create_pool
from services.core.transitions import start
from services.stack.embedded import postgres_process, postgres_url, wait_for_postgres
from services.stack.ports import free_port

GATE = """gated AS (
    SELECT coalesce(array_agg(g.kind), '{}') AS kinds
    FROM rt_kind_gates((SELECT array_agg(DISTINCT kind) FROM locked)) AS g
),
"""
ON_START = start._FAST_START
OFF_START = (
    ON_START.replace(GATE, "")
    .replace("FROM t, locked, gated WHERE", "FROM t, locked WHERE")
    .replace("\n    AND locked.concurrency_key IS NULL AND locked.kind <> ALL(gated.kinds)", "")
)
END = "UPDATE tasks SET status = 4, finished_at = now() WHERE id = ANY($1::uuid[]) AND status = 2"


async def _seed(pool: asyncpg.Pool, n: int) -> list[tuple[uuid.UUID, uuid.UUID]]:
    owner = uuid.uuid4()
    await pool.execute("INSERT INTO users (id, email, password_hash) VALUES ($1, $2, 'x')", owner, f"{owner}@bench")
    ids = [(uuid.uuid4(), uuid.uuid4()) for _ in range(n)]
    await pool.execute(
        "INSERT INTO tasks (id, owner_id, name, kind, status, max_attempts, request_id, batch_id, replica_index, "
        "workload_ms, max_runtime_ms, dispatch_id) "
        "SELECT t.id, $1, 'bench', 'sleep', 1, 1, t.id::text, t.id, 0, 0, 60000, t.dispatch_id "
        "FROM unnest($2::uuid[], $3::uuid[]) AS t(id, dispatch_id)",
        owner,
        [i for i, _ in ids],
        [d for _, d in ids],
    )
    return ids


async def _batch(pool: asyncpg.Pool, on: bool, chunk: list[tuple[uuid.UUID, uuid.UUID]]) -> tuple[float, float]:
    """Seconds of one start statement and one end statement over the chunk."""
    await pool.execute(f"ALTER TABLE tasks {'ENABLE' if on else 'DISABLE'} TRIGGER tasks_keys_released")
    ids, dispatches = [i for i, _ in chunk], [d for _, d in chunk]
    began = time.perf_counter()
    rows = await pool.fetch(ON_START if on else OFF_START, "bench-worker", ids, dispatches, ["e"] * len(chunk))
    started = time.perf_counter()
    await pool.execute(END, ids)
    ended = time.perf_counter()
    assert len(rows) == len(chunk)
    return started - began, ended - started


async def measure(url: str, rounds: int, batches: int, batch: int) -> None:
    """Batches alternate on and off (the order flips every pair), so a loaded machine's drift falls on both."""
    pool = await create_pool(DatabaseConfig(url, pool_min_size=1, pool_max_size=2))
    times: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    try:
        for index in range(rounds):
            tasks = await _seed(pool, 2 * batches * batch)
            for pair in range(batches):
                for k, on in enumerate((True, False) if pair % 2 == 0 else (False, True)):
                    first = (2 * pair + k) * batch
                    times[on].append(await _batch(pool, on, tasks[first : first + batch]))
            print(f"round {index + 1} of {rounds} done", flush=True)
        await pool.execute("ALTER TABLE tasks ENABLE TRIGGER tasks_keys_released")
    finally:
        await pool.close()
    for part, label in ((0, "start"), (1, "end")):
        on = statistics.median(t[part] for t in times[True]) * 1e6
        off = statistics.median(t[part] for t in times[False]) * 1e6
        print(
            f"{label} statement: on {on:.0f} us, off {off:.0f} us per batch of {batch} (on/off {on / off:.3f}; "
            f"medians of {len(times[True])} batches each)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--batch", type=int, default=50)
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="rtask-kind-ab-"))
    port = free_port()
    pg = postgres_process(data_dir, port, log_dir=data_dir / "logs", echo=None)
    pg.start()
    try:
        wait_for_postgres(pg, port)
        asyncio.run(measure(postgres_url(port), args.rounds, args.batches, args.batch))
    finally:
        pg.stop(grace_s=15, sig=signal.SIGINT)
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
