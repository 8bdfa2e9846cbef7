"""Delayed tasks: how close to its run_at a task reaches the dispatch stream, and how fast a burst of due tasks goes.

    .venv/bin/python -m bench.scheduling [--quick] [--doc docs/benchmarks-scheduling.md]

Starts its own embedded PostgreSQL and Valkey and our full local stack (2 schedulers, so two due publishers
compete as in production, 2 gateways, Envoy, the workers of bench/handlers.py), and measures through Envoy:

- precision: delayed tasks submitted ahead with run_at spread over some seconds; for each, the dispatch entry's
  time (the millisecond part of its stream entry id, given by Valkey at the XADD) minus its run_at, and the
  handler's own start stamp minus its run_at;
- burst: 10,000 tasks all due in the same second; the time from that second to the last dispatch entry added
  (and to the start of the last flip statement, and to the last handler start): once with the workers stopped
  until every entry is in (the publication alone, as when workers run on other machines), once with them
  draining the tasks meanwhile on the same cores.

Figures are printed, never asserted; the load average is recorded with them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import redis.asyncio as aioredis
from google.protobuf import timestamp_pb2

from bench.figures import spread_ms
from bench.ours import OurBench, Servers
from bench.run import STAMPS_DB, machine, source_version, stores
from bench.stamps import parse_start, start_key
from resilienttask.v1 import auth_pb2, auth_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc, task_pb2
from services.core import keys
from services.core.dispatch import parse_ref

SYSTEM = "ours"
SUBMIT_BATCH = 50
SUBMITS_IN_FLIGHT = 8
BURST_LEAD_S = 10


@dataclass(frozen=True)
class Sizes:
    precision_tasks: int
    precision_spread_s: float
    burst_tasks: int
    workers: int
    slots: int


FULL = Sizes(precision_tasks=400, precision_spread_s=20.0, burst_tasks=10_000, workers=3, slots=50)
QUICK = Sizes(precision_tasks=100, precision_spread_s=5.0, burst_tasks=2_000, workers=2, slots=50)


def stamp(at: datetime) -> timestamp_pb2.Timestamp:
    value = timestamp_pb2.Timestamp()
    value.FromDatetime(at)
    return value


def entry_ms(entry_ref: str) -> int:
    """The millisecond part of a dispatch entry reference ("<kind>:<ms>-<seq>", see dispatch.parse_ref)."""
    return int(parse_ref(entry_ref)[1].split("-")[0])


class Session:
    """One user of the bench stack, calling SchedulerService through Envoy."""

    def __init__(self, channel: grpc.aio.Channel, token: str) -> None:
        self.stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        self.metadata = (("authorization", f"Bearer {token}"),)
        self.gate = asyncio.Semaphore(SUBMITS_IN_FLIGHT)

    @classmethod
    async def signup(cls, channel: grpc.aio.Channel) -> tuple[Session, str]:
        reply = await auth_pb2_grpc.AuthServiceStub(channel).Signup(
            auth_pb2.SignupRequest(email=f"sched-{uuid.uuid4().hex[:12]}@example.com", password="bench password")
        )
        return cls(channel, reply.access_token), reply.user.id

    async def submit(self, kind: str, label: str, run_at: datetime, replicas: int = 1) -> list[task_pb2.Task]:
        request = scheduler_pb2.SubmitTaskRequest(
            name="delayed", kind=kind, replicas=replicas, run_at=stamp(run_at), max_attempts=1
        )
        request.payload.update({"label": label})
        async with self.gate:
            reply = await self.stub.SubmitTask(request, metadata=self.metadata)
        return list(reply.tasks)

    async def succeeded(self) -> int:
        reply = await self.stub.GetStats(scheduler_pb2.GetStatsRequest(), metadata=self.metadata)
        return int(reply.stats.succeeded)


async def until(probe: Any, timeout_s: float, interval_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await probe():
            return True
        await asyncio.sleep(interval_s)
    return False


async def precision(
    session: Session, owner: str, pool: asyncpg.Pool, stamps: aioredis.Redis, sizes: Sizes
) -> dict[str, Any]:
    """Tasks due one after another (random gaps), each its own label so its handler's start is its own."""
    n = sizes.precision_tasks
    first = datetime.now(UTC) + timedelta(seconds=3)
    offsets = sorted(random.uniform(0, sizes.precision_spread_s) for _ in range(n))
    labels = [uuid.uuid4().hex[:12] for _ in range(n)]
    tasks = await asyncio.gather(
        *(
            session.submit("bench.stamp", label, first + timedelta(seconds=o))
            for label, o in zip(labels, offsets, strict=True)
        )
    )
    late = sum(1 for (t,) in tasks if t.status != task_pb2.TASK_STATUS_SCHEDULED)
    done = await until(lambda: _at_least(session, n), sizes.precision_spread_s + 60)
    rows = await pool.fetch("SELECT id, run_at, entry_id FROM tasks WHERE owner_id = $1", owner)
    to_entry = [(entry_ms(r["entry_id"]) - r["run_at"].timestamp() * 1000) / 1000 for r in rows if r["entry_id"]]
    to_start: list[float] = []
    for (task,), label in zip(tasks, labels, strict=True):
        starts = [parse_start(raw) for raw in await stamps.lrange(start_key(SYSTEM, label), 0, -1)]
        if starts:
            to_start.append(min(s.at for s in starts) - task.run_at.ToDatetime(tzinfo=UTC).timestamp())
    return {
        "tasks": n,
        "spread_s": sizes.precision_spread_s,
        "not_scheduled_at_submit": late,
        "all_succeeded": done,
        "due_to_entry_ms": spread_ms(to_entry),
        "due_to_entry_min_ms": round(min(to_entry) * 1000, 2) if to_entry else None,
        "due_to_start_ms": spread_ms(to_start),
        "early_starts": sum(1 for s in to_start if s < 0),
    }


async def _at_least(session: Session, n: int) -> bool:
    return await session.succeeded() >= n


@contextmanager
def paused(process_groups: Sequence[int]) -> Iterator[None]:
    """The processes (with their children) stopped, then continued: as if they ran on other machines."""
    for group in process_groups:
        os.killpg(group, signal.SIGSTOP)
    try:
        yield
    finally:
        for group in process_groups:
            os.killpg(group, signal.SIGCONT)


async def burst(
    session: Session,
    owner: str,
    pool: asyncpg.Pool,
    stream: aioredis.Redis,
    sizes: Sizes,
    pause: Sequence[int] = (),
) -> dict[str, Any]:
    """Every task due in the same second: submitted ahead (SUBMIT_BATCH replicas per call), then left to fall due.

    With `pause` (the workers' process groups), the workers are stopped from just before the second until every
    entry is in the stream: the publication alone, as when the workers run on other machines; without, they
    drain the tasks meanwhile on the same two cores.
    """
    n = sizes.burst_tasks
    label = uuid.uuid4().hex[:12]
    # Far enough ahead that every task is stored SCHEDULED before its second even on a loaded machine (about 3 s
    # for 10,000 on an idle one); scheduled_before_due says whether it was.
    due = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=BURST_LEAD_S)
    started = time.monotonic()
    sizes_ = [min(SUBMIT_BATCH, n - i) for i in range(0, n, SUBMIT_BATCH)]
    await asyncio.gather(*(session.submit("bench.noop", label, due, replicas=k) for k in sizes_))
    submit_s = time.monotonic() - started
    scheduled = await pool.fetchval("SELECT count(*) FROM tasks WHERE owner_id = $1 AND status = 8", owner)
    due_ms = due.timestamp() * 1000
    last_entry: float | None = None
    if pause:
        key = keys.dispatch_stream("bench.noop")
        await asyncio.sleep(max(0.0, due.timestamp() - 0.5 - time.time()))
        with paused(pause):
            before = int(await stream.xlen(key))

            async def all_in() -> bool:
                return int(await stream.xlen(key)) >= before + n

            await until(all_in, 60, 0.01)
            (newest,) = await stream.xrevrange(key, count=1)
            last_entry = entry_ms(f"bench.noop:{newest[0].decode()}")
    done = await until(lambda: _at_least(session, n), 120)
    row = await pool.fetchrow(
        "SELECT max(h.at) AS flipped, count(*) AS n FROM task_history AS h JOIN tasks ON tasks.id = h.task_id "
        "WHERE tasks.owner_id = $1 AND h.from_status = 8 AND h.to_status = 1",
        owner,
    )
    entries = await pool.fetch("SELECT entry_id, started_at FROM tasks WHERE owner_id = $1", owner)
    if last_entry is None:
        last_entry = max(entry_ms(r["entry_id"]) for r in entries if r["entry_id"])
    last_start = max(r["started_at"] for r in entries if r["started_at"] is not None)
    assert row is not None
    return {
        "tasks": n,
        "workers": "paused until every entry was in" if pause else "draining meanwhile",
        "submitted_in_s": round(submit_s, 2),
        "scheduled_before_due": scheduled,
        "all_succeeded": done,
        "flipped": row["n"],
        "due_to_last_flipped_s": round((row["flipped"].timestamp() * 1000 - due_ms) / 1000, 3),
        "due_to_last_entry_s": round((last_entry - due_ms) / 1000, 3),
        "due_to_last_start_s": round((last_start.timestamp() * 1000 - due_ms) / 1000, 3),
    }


async def measure(servers: Servers, log_dir: Path, sizes: Sizes) -> dict[str, Any]:
    ours = OurBench(servers, log_dir)
    pool = await asyncpg.create_pool(servers.database_url, min_size=1, max_size=2)
    assert pool is not None
    stream = aioredis.Redis.from_url(servers.redis_url)
    try:
        with ours.stack(sizes.workers, sizes.slots, schedulers=2) as stack:
            async with grpc.aio.insecure_channel(stack.edge_address) as channel:
                session, owner = await Session.signup(channel)
                results = {"precision": await precision(session, owner, pool, ours.stamps, sizes)}
                workers = [stack.processes[name].pid for name in stack.names("worker")]
                session, owner = await Session.signup(channel)
                results["burst_alone"] = await burst(session, owner, pool, stream, sizes, pause=workers)
                session, owner = await Session.signup(channel)
                results["burst"] = await burst(session, owner, pool, stream, sizes)
        return results
    finally:
        await pool.close()
        await stream.aclose()
        await ours.stamps.aclose()


def _burst_rows(run: dict[str, Any]) -> list[str]:
    return [
        f"| {run['tasks']:,} due in the same second, workers {run['workers']}: due → last dispatch entry "
        f"| {run['due_to_last_entry_s']} s | ≤ 2 s |",
        f"| … due → last flip statement began | {run['due_to_last_flipped_s']} s | |",
        f"| … due → last handler start | {run['due_to_last_start_s']} s | |",
        f"| … flipped (each exactly once) / all succeeded | {run['flipped']:,} / {run['all_succeeded']} | |",
    ]


def document(meta: dict[str, Any], results: dict[str, Any]) -> str:
    p, a, b = results["precision"], results["burst_alone"], results["burst"]
    entry, start = p["due_to_entry_ms"], p["due_to_start_ms"]
    load = meta["machine"]
    return "\n".join(
        [
            "# Benchmarks: delayed tasks",
            "",
            f"Generated by `{meta['command']}` (bench/scheduling.py) on {meta['date']}, commit {meta['commit']}; "
            f"{load['nproc']} cores, load average {load['load_avg_at_start']} at the start and "
            f"{load.get('load_avg_at_end')} at the end" + (f"; {meta['note']}" if meta["note"] else "") + ".",
            "",
            "Our full local stack through Envoy (2 schedulers, so two due publishers compete; 2 gateways; "
            f"{meta['sizes']['workers']} workers x {meta['sizes']['slots']} slots) on its own embedded PostgreSQL "
            "and Valkey. Figures are measured, never asserted: the machine is shared, and load moves them.",
            "",
            "| figure | value | target |",
            "| --- | --- | --- |",
            f"| due → dispatch entry, p50 ({p['tasks']} tasks due at random over {p['spread_s']:g} s) "
            f"| {entry.get('p50')} ms | |",
            f"| due → dispatch entry, p99 | {entry.get('p99')} ms | ≤ 100 ms |",
            f"| due → dispatch entry, earliest | {p['due_to_entry_min_ms']} ms (never before due) | ≥ 0 |",
            f"| due → handler start, p50 / p99 | {start.get('p50')} / {start.get('p99')} ms | |",
            f"| handler starts before run_at | {p['early_starts']} | 0 |",
            *(line for run in (a, b) for line in _burst_rows(run)),
            "",
            *(
                f"**Not a valid burst** ({run['workers']}): only {run['scheduled_before_due']:,} were stored before "
                "their second.\n"
                for run in (a, b)
                if run["scheduled_before_due"] < run["tasks"]
            ),
            "How it is measured: the dispatch entry's time is the millisecond part of its stream entry id (Valkey's "
            "clock at the XADD; the stack shares one machine, so one clock); run_at is the task's as stored; the "
            "handler start is the body's own stamp (`bench.stamp`). The burst's tasks are submitted ahead "
            f"({b['submitted_in_s']} s for {b['tasks']:,} in calls of {SUBMIT_BATCH} replicas), all SCHEDULED "
            f"({b['scheduled_before_due']:,}) before their second; the last flip statement's start is the latest "
            "history row SCHEDULED → QUEUED (stamped at its statement's start), the last start the latest started_at.",
            "",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer tasks: for trying the harness, not for quoting")
    parser.add_argument("--doc", type=Path, help="write the figures page here (docs/benchmarks-scheduling.md)")
    parser.add_argument("--note", default="", help="a remark printed with the run (e.g. what else ran meanwhile)")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    meta: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": source_version(),
        "command": "python -m bench.scheduling " + " ".join(sys.argv[1:]) if sys.argv[1:] else "make bench-scheduling",
        "note": args.note,
        "machine": machine(),
        "sizes": sizes.__dict__,
    }
    print(f"bench.scheduling: {meta['date']}, load average {meta['machine']['load_avg_at_start']}", flush=True)
    data_dir = Path(tempfile.mkdtemp(prefix="rtask-bench-sched-"))
    log_dir = data_dir / "logs"
    try:
        with stores(data_dir, log_dir) as (database_url, redis_url):
            servers = Servers(database_url, f"{redis_url}/0", f"{redis_url}/{STAMPS_DB}", data_dir)
            results = asyncio.run(measure(servers, log_dir, sizes))
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    meta["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    text = document(meta, results)
    print(results)
    print(text)
    if args.doc is not None:
        args.doc.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
