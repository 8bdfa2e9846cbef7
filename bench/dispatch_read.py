"""One worker read of 2 entries across a kind's 5 priority levels x 2 lanes: the dispatch library's function (one
round trip) against the same reads lane by lane (one round trip per lane passed).

    .venv/bin/python -m bench.dispatch_read [--reads 2000]

Starts a Valkey of its own with our ACL users and the library, reads as the workers' user, and prints the time of
one read (services.worker.consumer.DispatchConsumer.read, parsing included) where the entries wait: in the first
lane read (level 5's share lane), half-way (level 3's share lane) and in the last (level 1's surplus lane, after
nine empty streams). Figures are printed, never asserted; the load average is printed with them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from services.core.config import RedisConfig
from services.core.dispatch import DispatchEntry, ensure_dispatch_groups, publish
from services.core.redis_client import create_redis
from services.stack.embedded import valkey_with_users
from services.stack.redis_users import RedisLogin, load_functions
from services.worker.consumer import AGING_EVERY_READS, DispatchConsumer

KIND = "bench"
ENTRIES_PER_READ = 2
# Where the entries wait: (priority, surplus lane).
PLACES = {
    "level 5, share lane (first)": (5, False),
    "level 3, share lane": (3, False),
    "level 1, surplus lane (last)": (1, True),
}


async def _time_reads(
    admin: RedisLogin, worker: RedisLogin, reads: int, priority: int, surplus: bool, function: bool
) -> list[float]:
    """Milliseconds of each of `reads` reads of ENTRIES_PER_READ entries, all waiting at (priority, surplus)."""
    database = 1 if function else 2
    publisher = create_redis(RedisConfig(admin.url_with_password().rsplit("/", 1)[0] + f"/{database}"))
    client = create_redis(RedisConfig(worker.url_with_password().rsplit("/", 1)[0] + f"/{database}"))
    try:
        await publisher.flushdb()
        await ensure_dispatch_groups(publisher, [KIND])
        made = [
            DispatchEntry(str(uuid.uuid4()), str(uuid.uuid4()), KIND, priority=priority, surplus=surplus)
            for _ in range(reads * ENTRIES_PER_READ)
        ]
        for start in range(0, len(made), 500):
            await publish(publisher, made[start : start + 500])
        consumer = DispatchConsumer(client, "bench", [KIND], read_function=function)
        times: list[float] = []
        for _ in range(reads):
            if (consumer._reads + 1) % AGING_EVERY_READS in (0, AGING_EVERY_READS // 2):
                consumer._reads += 1  # not a read that gives a lower level or the surplus lanes the first pick
            started = time.perf_counter()
            got = await consumer.read(ENTRIES_PER_READ, block_ms=1)
            times.append((time.perf_counter() - started) * 1000)
            assert len(got) == ENTRIES_PER_READ, len(got)
        return times
    finally:
        await publisher.flushdb()
        await publisher.aclose()
        await client.aclose()


def _figures(times: list[float]) -> str:
    ordered = sorted(times)
    p90 = ordered[int(len(ordered) * 0.9)]
    return f"median {statistics.median(ordered):.3f} ms, p90 {p90:.3f} ms"


async def _run(admin: RedisLogin, worker: RedisLogin, reads: int) -> None:
    for place, (priority, surplus) in PLACES.items():
        for function in (True, False):
            times = await _time_reads(admin, worker, reads, priority, surplus, function)
            how = "function, one round trip" if function else "lane by lane"
            print(f"{place:30} {how:26} {_figures(times)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reads", type=int, default=2000)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="rtask-bench-read-") as folder,
        valkey_with_users(Path(folder)) as (_, access),
    ):
        assert access.admin is not None
        load_functions(access.admin)
        print(f"bench.dispatch_read: {args.reads} reads of {ENTRIES_PER_READ} entries, load average {os.getloadavg()}")
        asyncio.run(_run(access.admin, access.worker, args.reads))
        print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
