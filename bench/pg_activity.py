"""Where PostgreSQL's sessions spend a drain: samples of pg_stat_activity while bench.fairness drains one side.

    .venv/bin/python -m bench.pg_activity off on gates fair

For each side named (bench.fairness SIDES), a fresh stack drains the no-op burst while another connection reads
pg_stat_activity every 5 ms; printed: the drain rate, then the mean number of our sessions in each (wait event,
statement) pair, busiest first. "Client:ClientRead" is a session inside a transaction waiting for its client (the
scheduler) to send the next statement; "Lock:..." waits for a row, transaction or advisory lock; an empty wait is a
session running. A profile, not a figure to quote: the sampler takes some of the machine.
"""

from __future__ import annotations

import asyncio
import collections
import shutil
import sys
import tempfile
from pathlib import Path

import asyncpg

from bench import fairness
from bench.ours import OurBench, Servers
from bench.run import STAMPS_DB, stores

SAMPLE_S = 0.005
TOP = 25
_ACTIVITY = r"""
SELECT coalesce(wait_event_type, '') AS wait_type, coalesce(wait_event, '') AS wait,
    regexp_replace(left(query, 70), '\s+', ' ', 'g') AS query
FROM pg_stat_activity
WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND state <> 'idle'
"""


async def sample(url: str, stop: asyncio.Event, seen: collections.Counter[tuple[str, str, str]]) -> int:
    """Count (wait type, wait, statement) of every busy session until stop; returns the number of samples."""
    conn = await asyncpg.connect(url)
    samples = 0
    try:
        while not stop.is_set():
            for row in await conn.fetch(_ACTIVITY):
                seen[(row["wait_type"], row["wait"], row["query"])] += 1
            samples += 1
            await asyncio.sleep(SAMPLE_S)
    finally:
        await conn.close()
    return samples


async def profile(database_url: str, ours: OurBench, sides: list[str]) -> None:
    for side in sides:
        seen: collections.Counter[tuple[str, str, str]] = collections.Counter()
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample(database_url, stop, seen))
        rate = await fairness.drain(ours, fairness.FULL, side)
        stop.set()
        samples = await sampler
        print(f"== {side}: {rate} tasks/s; {samples} samples; mean busy sessions by (wait, statement):")
        for (wait_type, wait, query), n in seen.most_common(TOP):
            print(f"  {n / max(1, samples):6.2f}  {wait_type}:{wait:18s} {query}")


def main() -> None:
    sides = sys.argv[1:] or ["off", "on"]
    unknown = [side for side in sides if side not in fairness.SIDES]
    if unknown:
        raise SystemExit(f"unknown sides {unknown}; known: {', '.join(fairness.SIDES)}")
    data_dir = Path(tempfile.mkdtemp(prefix="rtask-pg-activity-"))
    try:
        with stores(data_dir, data_dir / "logs") as (database_url, redis_url):
            servers = Servers(database_url, f"{redis_url}/0", f"{redis_url}/{STAMPS_DB}", data_dir)
            ours = OurBench(servers, data_dir / "logs")

            async def run() -> None:
                try:
                    await profile(database_url, ours, sides)
                finally:
                    await ours.close()

            asyncio.run(run())
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
