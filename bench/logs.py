"""How a chatty handler is bounded: handlers printing (and logging) as fast as they can, and what that costs.

    .venv/bin/python -m bench.logs [--seconds 20] [--tasks 3000] [--floods 2]

Starts a throwaway local stack (embedded PostgreSQL and Valkey, 1 scheduler, 2 gateways, 2 workers x 10 slots,
Envoy) whose workers also import bench/log_handlers.py, then measures through Envoy:

1. quiet: the scheduler's CPU over a window with nothing running;
2. flood: `--floods` handlers printing to stdout and one logging through ctx.log, as fast as they can, for
   `--seconds`: lines printed, lines stored (read back with WatchTaskLogs), lines dropped (the sequence gaps),
   and the CPU of the scheduler and of the workers per second meanwhile;
3. a hostile worker: a Connect stream of our own sending log lines as fast as it can, past every worker-side
   bound: lines sent per second, and the scheduler's CPU meanwhile (the scheduler's own bounds hold);
4. dispatch: `--tasks` no-op tasks drained alone, during as many handlers spinning silently (the built-in
   `spin`: the same CPU taken from the machine, no output), and during the flood: what the logging itself costs
   the other tasks is the difference between the last two.

Figures are printed (a Markdown table, for docs/benchmarks-logs.md), never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc
import redis.asyncio as aioredis

from bench.cpu_share import cpu_seconds
from bench.log_handlers import LOGGER_FLOOD, PRINT_FLOOD
from resilienttask import AsyncClient, Task
from resilienttask.v1 import scheduler_pb2, scheduler_pb2_grpc
from resilienttask.worker.v1 import worker_pb2
from services.core import keys
from services.core.limits import UserLimits
from services.core.worker_credentials import EnrolmentConfig
from services.stack.stack import Stack, StackConfig
from services.worker.connection import SchedulerLink, WorkerTokens

REPLICAS = 50
IN_FLIGHT = 8


@dataclass
class FloodFigures:
    seconds: float
    # Valkey's MEMORY USAGE of the flood tasks' logs, and the bytes the store's bound counted for them.
    memory_bytes: int
    counted_bytes: int
    printed: int
    stored: int
    dropped: int
    scheduler_cpu_per_s: float
    workers_cpu_per_s: float
    gateways_cpu_per_s: float


async def stored_and_dropped(edge: str, token: str, task_id: str) -> tuple[int, int]:
    """Lines stored for the task, and the lines WatchTaskLogs reports dropped (before, between and after them)."""
    stored = dropped = 0
    async with grpc.aio.insecure_channel(edge) as channel:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        request = scheduler_pb2.WatchTaskLogsRequest(task_id=task_id)
        async for message in stub.WatchTaskLogs(request, metadata=(("authorization", f"Bearer {token}"),)):
            stored += len(message.lines)
            dropped += message.dropped
    return stored, dropped


async def drain(client: AsyncClient, tasks: int) -> float:
    """Submit `tasks` no-op sleeps and wait until all of them succeeded; tasks per second."""
    before = (await client.stats()).succeeded
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def submit(replicas: int) -> None:
        async with gate:
            await client.submit("noop", kind="sleep", workload=0, replicas=replicas)

    started = time.monotonic()
    await asyncio.gather(*(submit(min(REPLICAS, tasks - i)) for i in range(0, tasks, REPLICAS)))
    while True:
        if (await client.stats()).succeeded >= before + tasks:
            return tasks / (time.monotonic() - started)
        await asyncio.sleep(0.05)


ADMIN_URL: list[str] = []


def stack_admin() -> aioredis.Redis | None:
    """An operator's connection to the stack's Valkey (MEMORY USAGE is no service's right)."""
    return aioredis.Redis.from_url(ADMIN_URL[0]) if ADMIN_URL else None


def role_cpu(pids: dict[str, int], before: dict[str, float], after: dict[str, float], role: str) -> float:
    return sum(after[n] - before[n] for n in pids if n.startswith(f"{role}-"))


async def flood(
    client: AsyncClient, pids: dict[str, int], seconds: float, floods: int, tasks: int
) -> tuple[FloodFigures, float | None]:
    """Floods for `seconds`; with `tasks`, a drain runs meanwhile (its rate is returned)."""
    submitted: list[Task] = []
    for _ in range(floods):
        submitted += await client.submit("print flood", kind=PRINT_FLOOD, payload={"seconds": seconds})
    submitted += await client.submit("logger flood", kind=LOGGER_FLOOD, payload={"seconds": seconds})
    before = cpu_seconds(pids)
    started = time.monotonic()
    rate = await drain(client, tasks) if tasks else None
    done = await client.wait(submitted, timeout=seconds + 120)
    wall = time.monotonic() - started
    after = cpu_seconds(pids)
    printed = sum(int((t.result or {}).get("printed", 0)) for t in done)
    stored = dropped = memory = counted = 0
    admin = stack_admin()
    for t in done:
        s, d = await stored_and_dropped(client.address, client.token or "", t.id)
        stored += s
        dropped += d
        if admin is not None:
            memory += int(await admin.memory_usage(keys.task_log_stream(t.id), samples=0) or 0)
            counted += int(await admin.hget(keys.task_log_meta(t.id), "bytes") or 0)  # type: ignore[misc]
    if admin is not None:
        await admin.aclose()
    figures = FloodFigures(
        seconds=wall,
        memory_bytes=memory,
        counted_bytes=counted,
        printed=printed,
        stored=stored,
        dropped=dropped,
        scheduler_cpu_per_s=role_cpu(pids, before, after, "scheduler") / wall,
        workers_cpu_per_s=role_cpu(pids, before, after, "worker") / wall,
        gateways_cpu_per_s=role_cpu(pids, before, after, "gateway") / wall,
    )
    return figures, rate


async def hostile(stack: Stack, pids: dict[str, int], seconds: float) -> tuple[float, int, float]:
    """A worker that ignores the worker-side bounds: lines it got written per second, how many of its streams the
    scheduler ended, and the scheduler's CPU per second meanwhile."""
    worker_id = f"hostile-{uuid.uuid4().hex[:8]}"
    hello = worker_pb2.WorkerHello(worker_id=worker_id, slots=10, kinds=["sleep"])

    async def announce() -> None:
        await link.heartbeat([])

    tokens = WorkerTokens(EnrolmentConfig(stack.enrolment_secret), worker_id)
    (scheduler,) = stack.names("scheduler")
    link = SchedulerLink([stack.address(scheduler)], tokens, hello, lambda _command: None, announce)
    running = asyncio.create_task(link.run())
    try:
        await asyncio.wait_for(link.connected.wait(), 30)
        logs = worker_pb2.TaskLogs()
        for _ in range(10):
            batch = logs.batches.add(task=worker_pb2.HeldTask(task_id=str(uuid.uuid4()), fence=1))
            for i in range(100):
                batch.lines.add(stream=scheduler_pb2.LOG_STREAM_STDOUT, text=f"hostile line {i} " + "x" * 60)
        message = worker_pb2.ConnectRequest(logs=logs)
        before = cpu_seconds(pids)
        started = time.monotonic()
        sent = 0
        ended = 0
        while time.monotonic() - started < seconds:
            if not await link.send(message):
                # The scheduler ended the stream (RESOURCE_EXHAUSTED): the link reconnects, and we flood again.
                ended += 1
                link.connected.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(link.connected.wait(), max(0.1, seconds - (time.monotonic() - started)))
                continue
            sent += 1_000
            if sent % 20_000 == 0:
                await link.heartbeat([])
        wall = time.monotonic() - started
        return sent / wall, ended, role_cpu(pids, before, cpu_seconds(pids), "scheduler") / wall
    finally:
        await link.close()
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


async def measure(stack: Stack, seconds: float, tasks: int, floods: int) -> None:
    pids = {name: proc.pid for name, proc in stack.processes.items() if proc.pid}
    async with AsyncClient(stack.edge_address, timeout=60) as client:
        await client.signup(f"logs-{uuid.uuid4().hex[:12]}@example.com", "bench password")
        await drain(client, 200)  # warm up
        before = cpu_seconds(pids)
        quiet_started = time.monotonic()
        await asyncio.sleep(min(seconds, 10))
        quiet_wall = time.monotonic() - quiet_started
        quiet = role_cpu(pids, before, cpu_seconds(pids), "scheduler") / quiet_wall
        alone_rate = await drain(client, tasks)
        spinners = await client.submit("spin", kind="spin", workload=seconds, replicas=floods + 1)
        spin_rate = await drain(client, tasks)
        await client.wait(spinners, timeout=seconds + 120)
        figures, _ = await flood(client, pids, seconds, floods, 0)
        during, during_rate = await flood(client, pids, seconds, floods, tasks)
    hostile_rate, hostile_ended, hostile_cpu = await hostile(stack, pids, seconds)
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {floods} print floods + 1 logger flood")
    print("| figure | value |")
    print("|---|---|")
    print(f"| scheduler CPU, quiet | {quiet * 100:.1f} % of a core |")
    for label, f in (("flood alone", figures), ("flood during the drain", during)):
        print(f"| {label}: lines printed / stored / reported dropped | {f.printed:,} / {f.stored:,} / {f.dropped:,} |")
        print(f"| {label}: lines stored per second | {f.stored / f.seconds:,.0f} |")
        memory = f"{f.memory_bytes:,} / {f.counted_bytes:,}"
        print(f"| {label}: Valkey memory of these logs / bytes the bound counted | {memory} |")
        print(f"| {label}: scheduler CPU | {f.scheduler_cpu_per_s * 100:.1f} % of a core |")
        print(f"| {label}: workers CPU (not their handlers) | {f.workers_cpu_per_s * 100:.1f} % of a core |")
        print(f"| {label}: gateways CPU | {f.gateways_cpu_per_s * 100:.1f} % of a core |")
    hostile_figures = f"{hostile_rate:,.0f} / {hostile_ended}"
    print(f"| a hostile worker: lines written per second / streams the scheduler ended | {hostile_figures} |")
    print(f"| a hostile worker: scheduler CPU | {hostile_cpu * 100:.1f} % of a core |")
    print(f"| drain of {tasks:,} no-op tasks, alone | {alone_rate:,.0f} tasks/s |")
    print(f"| drain of {tasks:,} no-op tasks, beside {floods + 1} silent spinners | {spin_rate:,.0f} tasks/s |")
    print(f"| drain of {tasks:,} no-op tasks, during the flood | {during_rate or 0:,.0f} tasks/s |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--floods", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rtask-logs-") as folder:
        config = StackConfig(
            data_dir=Path(folder),
            edge_port=0,
            edge_tls_port=0,
            admin_port=0,
            workers=2,
            worker_slots=10,
            bcrypt_cost=4,
            dashboard_dir=None,
            limits=UserLimits.unlimited(),
            extra_env={"RTASK_WORKER_IMPORTS": "bench.log_handlers", "RTASK_LOG_LEVEL": "WARNING"},
        )
        with Stack(config) as stack:
            if stack.redis_access is not None and stack.redis_access.admin is not None:
                ADMIN_URL.append(stack.redis_access.admin.url_with_password())
            asyncio.run(measure(stack, args.seconds, args.tasks, args.floods))


if __name__ == "__main__":
    main()
