"""What a synchronous standby costs a commit: one primary and its streaming standby on loopback (docs/postgresql-ha.md).

    .venv/bin/python -m bench.pg_sync_commit [--rounds 3] [--commits 400] [--clients 16]

Each commit is a one-row INSERT in autocommit, on the primary of services.stack.postgres_replica's pair, with the
session's synchronous_commit set to: `local` (flushed on the primary only: what a single server gives), `on` (also
flushed on the standby: what the failover setup uses) and `remote_apply` (also applied there). One client in a
loop gives the latency of one commit; `--clients` connections at once give the throughput, where commits waiting
for the standby are flushed together. Modes alternate within each round; medians over rounds. Printed, never
asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import asyncpg

from services.stack.ports import free_port
from services.stack.postgres_replica import start_replicated

MODES = ("local", "on", "remote_apply")


async def _one_client(url: str, mode: str, commits: int) -> float:
    """Milliseconds per commit, one after the other on one connection."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"SET synchronous_commit = {mode}")
        started = time.perf_counter()
        for i in range(commits):
            await conn.execute("INSERT INTO bench_commits (v) VALUES ($1)", i)
        return (time.perf_counter() - started) / commits * 1000
    finally:
        await conn.close()


async def _many_clients(url: str, mode: str, commits: int, clients: int) -> float:
    """Commits per second with `clients` connections committing at once."""
    conns = [await asyncpg.connect(url) for _ in range(clients)]
    try:
        for conn in conns:
            await conn.execute(f"SET synchronous_commit = {mode}")

        async def run(conn: asyncpg.Connection) -> None:
            for i in range(commits // clients):
                await conn.execute("INSERT INTO bench_commits (v) VALUES ($1)", i)

        started = time.perf_counter()
        await asyncio.gather(*(run(conn) for conn in conns))
        return (commits // clients) * clients / (time.perf_counter() - started)
    finally:
        for conn in conns:
            await conn.close()


async def measure(url: str, rounds: int, commits: int, clients: int) -> None:
    setup = await asyncpg.connect(url)
    try:
        await setup.execute("CREATE TABLE IF NOT EXISTS bench_commits (id bigserial PRIMARY KEY, v int)")
    finally:
        await setup.close()
    latency: dict[str, list[float]] = {m: [] for m in MODES}
    throughput: dict[str, list[float]] = {m: [] for m in MODES}
    for r in range(rounds):
        order = MODES if r % 2 == 0 else tuple(reversed(MODES))
        for mode in order:
            latency[mode].append(await _one_client(url, mode, commits))
            throughput[mode].append(await _many_clients(url, mode, commits * 4, clients))
    print(f"{'synchronous_commit':<20}{'ms per commit (1 client)':>26}{f'commits/s ({clients} clients)':>28}")
    for mode in MODES:
        print(f"{mode:<20}{statistics.median(latency[mode]):>26.2f}{statistics.median(throughput[mode]):>28.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--commits", type=int, default=400)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="rtask-bench-pg-ha-"))
    pair = start_replicated(data_dir, [free_port(), free_port()], log_dir=data_dir / "logs")
    try:
        asyncio.run(measure(pair.url, args.rounds, args.commits, args.clients))
    finally:
        pair.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
