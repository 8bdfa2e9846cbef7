"""Where one machine saturates: drain rate, submit → start latency and CPU per task per tier, as workers,
gateways and schedulers are added, each configuration on a throwaway local stack of its own.

    .venv/bin/python -m bench.saturation                  # every configuration, 4,000 no-op tasks each
    .venv/bin/python -m bench.saturation --tasks 1500 --latency-tasks 30 --configs 1x1x1,3x2x1
    .venv/bin/python -m bench.saturation --redis-cluster [--dispatch-shards 3]   # on a Valkey Cluster

A configuration is WORKERSxGATEWAYSxSCHEDULERS (10 slots per worker). Each is measured the same way: a drain of
no-op tasks (SubmitTask calls of 50 replicas, 8 in flight, through Envoy, as bench/cpu_share.py does) with the
CPU seconds of every process counted meanwhile, then `--latency-tasks` single tasks one after another, each
from submission to its recorded start (the task's own created_at and started_at, both from PostgreSQL's
clock). CPU is grouped by tier (all gateways together, all schedulers, all workers with their handler
processes, Envoy, PostgreSQL, Valkey), and a tier's capacity per core is 1,000 / (its CPU ms per task): the
drain rate one core spent on that tier alone would carry. The machine is shared: compare configurations
within one run, never figures across runs. With --redis-cluster each stack runs on a cluster of 3 primaries and
3 replicas of its own (bench.cluster_drain's), whose six servers' CPU is the valkey tier, sharing the same cores.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import uuid
from collections import defaultdict
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from bench.cluster_drain import bench_valkey
from bench.cpu_share import cpu_seconds, drain
from resilienttask import AsyncClient
from services.core.limits import UserLimits
from services.stack.stack import Stack, StackConfig

DEFAULT_CONFIGS = ("1x1x1", "2x1x1", "3x1x1", "4x1x1", "3x2x1", "3x2x2")
TIERS = ("gateway", "scheduler", "worker", "envoy", "postgres", "valkey")


@dataclass(frozen=True)
class Shape:
    workers: int
    gateways: int
    schedulers: int

    @classmethod
    def parse(cls, text: str) -> Shape:
        workers, gateways, schedulers = (int(part) for part in text.lower().split("x"))
        return cls(workers, gateways, schedulers)

    def __str__(self) -> str:
        return f"{self.workers}w {self.gateways}g {self.schedulers}s"


@dataclass(frozen=True)
class Figures:
    shape: Shape
    drain_per_s: float
    start_p50_ms: float
    start_p99_ms: float
    cpu_ms_per_task: dict[str, float]


def _tier(process: str) -> str:
    """The tier of a process of the local stack ("worker-2" → "worker")."""
    for tier in TIERS:
        if process.startswith(tier):
            return tier
    return "other"


async def start_latencies(edge: str, count: int) -> list[float]:
    """Milliseconds from submission to start of `count` single no-op tasks, one after another."""
    async with AsyncClient(edge, timeout=60) as client:
        await client.signup(f"sat-{uuid.uuid4().hex[:12]}@example.com", "bench password")
        latencies = []
        for _ in range(count):
            (task,) = await client.submit("probe", kind="sleep", workload=0)
            (done,) = await client.wait([task], timeout=60)
            if done.started_at is not None and done.created_at is not None:
                latencies.append((done.started_at - done.created_at).total_seconds() * 1000)
        return latencies


def measure(shape: Shape, tasks: int, latency_tasks: int, cluster: bool = False, shards: int = 1) -> Figures:
    with (
        tempfile.TemporaryDirectory(prefix="rtask-saturation-") as folder,
        ExitStack() as servers,
    ):
        valkey = servers.enter_context(bench_valkey(Path(folder) / "valkey", cluster=True)) if cluster else None
        config = StackConfig(
            data_dir=Path(folder) / "stack",
            redis_access=valkey.access if valkey else None,
            extra_env={"RTASK_DISPATCH_SHARDS": str(shards)},
            edge_port=0,
            edge_tls_port=0,
            admin_port=0,
            workers=shape.workers,
            gateways=shape.gateways,
            schedulers=shape.schedulers,
            worker_slots=10,
            bcrypt_cost=4,
            dashboard_dir=None,
            limits=UserLimits.unlimited(),  # one user's throughput on purpose (docs/limits.md)
        )
        with Stack(config) as stack:
            pids = {name: proc.pid for name, proc in stack.processes.items() if proc.pid}
            pids.update(valkey.pids if valkey else {})
            before = cpu_seconds(pids)
            wall_s = asyncio.run(drain(stack.edge_address, tasks))
            after = cpu_seconds(pids)
            latencies = sorted(asyncio.run(start_latencies(stack.edge_address, latency_tasks)))
    per_tier: dict[str, float] = defaultdict(float)
    for name in pids:
        per_tier[_tier(name)] += (after[name] - before[name]) / tasks * 1000
    p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))] if latencies else float("nan")
    p50 = statistics.median(latencies) if latencies else float("nan")
    return Figures(shape, tasks / wall_s, p50, p99, dict(per_tier))


def table(results: Sequence[Figures]) -> str:
    """The figures as a markdown table: one row per configuration, CPU ms per task per tier."""
    tiers = [t for t in (*TIERS, "other") if any(t in r.cpu_ms_per_task for r in results)]
    head = ["configuration", "drain tasks/s", "start p50 ms", "start p99 ms", *(f"{t} ms/task" for t in tiers)]
    head.append("all ms/task")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cpu = [r.cpu_ms_per_task.get(t, 0.0) for t in tiers]
        cells = [str(r.shape), f"{r.drain_per_s:,.0f}", f"{r.start_p50_ms:.1f}", f"{r.start_p99_ms:.1f}"]
        cells += [f"{c:.3f}" for c in cpu] + [f"{sum(cpu):.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def capacity(results: Sequence[Figures]) -> str:
    """Each tier's drain rate per core (1,000 / CPU ms per task), from the configuration with the most of it."""
    best = max(results, key=lambda r: r.drain_per_s)
    rows = [f"Capacity per core, from {best.shape} (the fastest drain):"]
    for tier, ms in sorted(best.cpu_ms_per_task.items(), key=lambda item: -item[1]):
        if ms > 0:
            rows.append(f"  {tier:10s} {ms:7.3f} ms/task  →  {1000 / ms:7,.0f} tasks/s per core")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=4000, help="no-op tasks per drain")
    parser.add_argument("--latency-tasks", type=int, default=50, help="sequential tasks for the start latency")
    parser.add_argument("--configs", default=",".join(DEFAULT_CONFIGS), help="WORKERSxGATEWAYSxSCHEDULERS,...")
    parser.add_argument("--redis-cluster", action="store_true", help="each stack on a Valkey Cluster of its own")
    parser.add_argument("--dispatch-shards", type=int, default=1, help="RTASK_DISPATCH_SHARDS of every stack")
    args = parser.parse_args()
    results = []
    for text in args.configs.split(","):
        shape = Shape.parse(text)
        figures = measure(shape, args.tasks, args.latency_tasks, args.redis_cluster, args.dispatch_shards)
        print(f"{shape}: {figures.drain_per_s:,.0f} tasks/s, start p50 {figures.start_p50_ms:.1f} ms", flush=True)
        results.append(figures)
    print()
    print(table(results))
    print()
    print(capacity(results))


if __name__ == "__main__":
    main()
