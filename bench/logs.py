"""How a chatty handler is bounded: handlers printing (and logging) as fast as they can, and what that costs.

    .venv/bin/python -m bench.logs [--seconds 20] [--tasks 3000] [--floods 2]

Starts a throwaway local stack (embedded PostgreSQL and Valkey, 1 scheduler, 2 gateways, 2 workers x 10 slots,
Envoy) whose workers also import bench/log_handlers.py, then measures through Envoy:

1. quiet: the scheduler's CPU over a window with nothing running;
2. flood: `--floods` handlers printing to stdout and one logging through ctx.log, as fast as they can, for
   `--seconds`: lines printed, lines stored (read back with WatchTaskLogs), lines dropped (the sequence gaps),
   and the CPU of the scheduler and of the workers per second meanwhile;
3. dispatch: `--tasks` no-op tasks drained alone, during as many handlers spinning silently (the built-in
   `spin`: the same CPU taken from the machine, no output), and during the flood: what the logging itself costs
   the other tasks is the difference between the last two.

Figures are printed (a Markdown table, for docs/benchmarks-logs.md), never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc

from bench.cpu_share import cpu_seconds
from bench.log_handlers import LOGGER_FLOOD, PRINT_FLOOD
from resilienttask import AsyncClient, Task
from resilienttask.v1 import scheduler_pb2, scheduler_pb2_grpc
from services.core.limits import UserLimits
from services.stack.stack import Stack, StackConfig

REPLICAS = 50
IN_FLIGHT = 8


@dataclass
class FloodFigures:
    seconds: float
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
    stored = dropped = 0
    for t in done:
        s, d = await stored_and_dropped(client.address, client.token or "", t.id)
        stored += s
        dropped += d
    figures = FloodFigures(
        seconds=wall,
        printed=printed,
        stored=stored,
        dropped=dropped,
        scheduler_cpu_per_s=role_cpu(pids, before, after, "scheduler") / wall,
        workers_cpu_per_s=role_cpu(pids, before, after, "worker") / wall,
        gateways_cpu_per_s=role_cpu(pids, before, after, "gateway") / wall,
    )
    return figures, rate


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
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {floods} print floods + 1 logger flood")
    print("| figure | value |")
    print("|---|---|")
    print(f"| scheduler CPU, quiet | {quiet * 100:.1f} % of a core |")
    for label, f in (("flood alone", figures), ("flood during the drain", during)):
        print(f"| {label}: lines printed / stored / reported dropped | {f.printed:,} / {f.stored:,} / {f.dropped:,} |")
        print(f"| {label}: lines stored per second | {f.stored / f.seconds:,.0f} |")
        print(f"| {label}: scheduler CPU | {f.scheduler_cpu_per_s * 100:.1f} % of a core |")
        print(f"| {label}: workers CPU (not their handlers) | {f.workers_cpu_per_s * 100:.1f} % of a core |")
        print(f"| {label}: gateways CPU | {f.gateways_cpu_per_s * 100:.1f} % of a core |")
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
            asyncio.run(measure(stack, args.seconds, args.tasks, args.floods))


if __name__ == "__main__":
    main()
