"""What the kind controls and concurrency keys cost on the hot path when none binds: an A/B in one database.

    .venv/bin/python -m bench.kind_controls_ab [--rounds 3] [--batches 200] [--batch 50] [--keyed]

"on" is the start statement workers' starts run (services.core.transitions.fast_start.FAST_START: it also calls
rt_kind_gates, a shared advisory lock per kind and a look-up of the kind's controls, and checks the keys of keyed
tasks, here none) and an end statement with the concurrency-key release trigger enabled; "off" is the start statement
as it was before (the same text without the gate) and the end statement with that trigger disabled. No kind is
paused or limited and no task has a key, as in a pool that uses none of it. Batches alternate on and off (the
order flips every pair); the figures are medians of per-batch times. Printed, never asserted.

--keyed measures the whole start of a batch as a worker's start request makes it (start.start_batch) with a
concurrency key on every task (ten keys, limit 1,000, never binding; "on") against the same tasks without a key
("off"), each followed by the same end statement (its key-release trigger enabled on both sides).
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

from resilienttask.worker.v1 import worker_pb2
from services.core.config import DatabaseConfig
from services.core.db import create_pool
from services.core.task_model import QUALIFIED_TASK_COLUMNS, QUEUED
from services.core.transitions import fast_start, start
from services.core.transitions.rules import history_of
from services.stack.embedded import postgres_process, postgres_url, wait_for_postgres
from services.stack.ports import free_port

ON_START = fast_start.FAST_START
# The start statement before the kind controls and keys: no gate, no key, no tokens.
OFF_START = f"""
WITH t AS (SELECT * FROM unnest($2::uuid[], $3::uuid[], $4::text[]) AS u(id, dispatch_id, entry_id)),
locked AS (
    SELECT tasks.id FROM tasks JOIN t ON tasks.id = t.id
    WHERE tasks.status = {QUEUED} AND tasks.dispatch_id = t.dispatch_id ORDER BY tasks.id FOR UPDATE OF tasks
),
started AS (
    UPDATE tasks SET {fast_start.START_SET}
    FROM t, locked WHERE tasks.id = t.id AND tasks.id = locked.id
    RETURNING {QUALIFIED_TASK_COLUMNS}
),
recorded AS ({history_of("started", str(QUEUED), "'started'")})
SELECT * FROM started
"""
END = "UPDATE tasks SET status = 4, finished_at = now() WHERE id = ANY($1::uuid[]) AND status = 2"


async def _seed(pool: asyncpg.Pool, n: int, keyed_chunk: int = 0) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """n queued tasks of a new owner; with keyed_chunk, the tasks of every odd chunk of that size (the "on" side's)
    carry one of ten keys."""
    owner = uuid.uuid4()
    await pool.execute("INSERT INTO users (id, email, password_hash) VALUES ($1, $2, 'x')", owner, f"{owner}@bench")
    ids = [(uuid.uuid4(), uuid.uuid4()) for _ in range(n)]
    await pool.execute(
        "INSERT INTO tasks (id, owner_id, name, kind, status, max_attempts, request_id, batch_id, replica_index, "
        "workload_ms, max_runtime_ms, dispatch_id, concurrency_key, concurrency_limit) "
        "SELECT t.id, $1, 'bench', 'sleep', 1, 1, t.id::text, t.id, 0, 0, 60000, t.dispatch_id, t.key, "
        "CASE WHEN t.key IS NULL THEN 0 ELSE 1000 END "
        "FROM unnest($2::uuid[], $3::uuid[], $4::text[]) AS t(id, dispatch_id, key)",
        owner,
        [i for i, _ in ids],
        [d for _, d in ids],
        [f"key-{i % 10}" if keyed_chunk and (i // keyed_chunk) % 2 else None for i in range(n)],
    )
    return ids


async def _batch(pool: asyncpg.Pool, on: bool, chunk: list[tuple[uuid.UUID, uuid.UUID]]) -> tuple[float, float]:
    """Seconds of one start statement and one end statement over the chunk."""
    await pool.execute(f"ALTER TABLE tasks {'ENABLE' if on else 'DISABLE'} TRIGGER tasks_keys_released")
    ids, dispatches = [i for i, _ in chunk], [d for _, d in chunk]
    began = time.perf_counter()
    entries = ["e"] * len(chunk)
    no_tokens: tuple[list[object], ...] = ([], [], [], [])
    rows = await (
        pool.fetch(ON_START, "bench-worker", ids, dispatches, entries, *no_tokens)
        if on
        else pool.fetch(OFF_START, "bench-worker", ids, dispatches, entries)
    )
    started = time.perf_counter()
    await pool.execute(END, ids)
    ended = time.perf_counter()
    assert len(rows) == len(chunk)
    return started - began, ended - started


async def _keyed_batch(pool: asyncpg.Pool, on: bool, chunk: list[tuple[uuid.UUID, uuid.UUID]]) -> tuple[float, float]:
    """Seconds of one start request's database work (keyed tasks when on) and one end statement over the chunk."""
    items = [worker_pb2.StartItem(task_id=str(i), dispatch_id=str(d), entry_id="sleep:1-0") for i, d in chunk]
    began = time.perf_counter()
    outcome = await start.start_batch(pool, "bench-worker", items)
    started = time.perf_counter()
    await pool.execute(END, [i for i, _ in chunk])
    ended = time.perf_counter()
    assert all(r.decision == worker_pb2.START_DECISION_RUN for r in outcome.results), on
    return started - began, ended - started


async def measure(url: str, rounds: int, batches: int, batch: int, keyed: bool = False) -> None:
    """Batches alternate on and off (the order flips every pair), so a loaded machine's drift falls on both."""
    pool = await create_pool(DatabaseConfig(url, pool_min_size=1, pool_max_size=2))
    times: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    try:
        for index in range(rounds):
            tasks = await _seed(pool, 2 * batches * batch, batch if keyed else 0)
            for pair in range(batches):
                for side in (True, False) if pair % 2 == 0 else (False, True):
                    # Chunks alternate keyed (odd) and plain (even) in the seed: pick the one of this side.
                    first = (2 * pair + (1 if side else 0)) * batch
                    chunk = tasks[first : first + batch]
                    times[side].append(await (_keyed_batch if keyed else _batch)(pool, side, chunk))
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
    parser.add_argument("--keyed", action="store_true", help="the whole start, keyed tasks against plain ones")
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="rtask-kind-ab-"))
    port = free_port()
    pg = postgres_process(data_dir, port, log_dir=data_dir / "logs", echo=None)
    pg.start()
    try:
        wait_for_postgres(pg, port)
        asyncio.run(measure(postgres_url(port), args.rounds, args.batches, args.batch, args.keyed))
    finally:
        pg.stop(grace_s=15, sig=signal.SIGINT)
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
