"""Where the machine's CPU goes per task: a no-op drain on a throwaway local stack, CPU time per process.

    .venv/bin/python -m bench.cpu_share                 # 6,000 no-op tasks, 2 workers x 10 slots
    .venv/bin/python -m bench.cpu_share --tasks 20000

The tasks run the built-in `sleep` kind with no workload (no body work, one progress report at each end),
submitted as SubmitTask calls of 50 replicas, 8 in flight, through Envoy; the drain ends when GetStats
(polled every 50 ms) counts them all SUCCEEDED. Printed: the drain rate and, per process (with its
children), the user+system CPU seconds spent meanwhile and the same per task. On 2 cores the drain rate
can never exceed 2 / (CPU seconds per task, all processes together).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path

import psutil

from resilienttask import AsyncClient
from services.core.limits import UserLimits
from services.stack.stack import Stack, StackConfig

REPLICAS = 50
IN_FLIGHT = 8
DRAIN_DEADLINE_S = 600.0


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User+system CPU time of each process and its children so far."""
    spent: dict[str, float] = {}
    for name, pid in pids.items():
        try:
            process = psutil.Process(pid)
            spent[name] = sum(p.cpu_times().user + p.cpu_times().system for p in [process, *process.children(True)])
        except psutil.Error:
            spent[name] = 0.0
    return spent


async def drain(edge: str, tasks: int, deadline_s: float = DRAIN_DEADLINE_S) -> float:
    """Submit `tasks` no-ops as a new user (so the GetStats polls count only them) and wait until all are
    SUCCEEDED; returns the seconds that took. Raises when one ends otherwise or the deadline passes."""
    async with AsyncClient(edge, timeout=60) as client:
        await client.signup(f"cpu-{uuid.uuid4().hex[:12]}@example.com", "bench password")
        gate = asyncio.Semaphore(IN_FLIGHT)

        async def submit(replicas: int) -> None:
            async with gate:
                await client.submit("noop", kind="sleep", workload=0, replicas=replicas)

        started = time.monotonic()
        await asyncio.gather(*(submit(min(REPLICAS, tasks - i)) for i in range(0, tasks, REPLICAS)))
        while True:
            stats = await client.stats()
            if stats.succeeded >= tasks:
                return time.monotonic() - started
            if stats.failed or stats.cancelled or stats.timed_out:
                raise RuntimeError(f"a no-op did not succeed: {stats}")
            if time.monotonic() - started > deadline_s:
                raise TimeoutError(f"{stats.succeeded} of {tasks} no-ops SUCCEEDED within {deadline_s:g} s")
            await asyncio.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=6000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--slots", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rtask-cpu-") as folder:
        config = StackConfig(
            data_dir=Path(folder),
            edge_port=0,
            edge_tls_port=0,
            admin_port=0,
            workers=args.workers,
            worker_slots=args.slots,
            bcrypt_cost=4,
            dashboard_dir=None,
            # One user's throughput on purpose: every per-user limit off (docs/limits.md).
            limits=UserLimits.unlimited(),
        )
        with Stack(config) as stack:
            pids = {name: proc.pid for name, proc in stack.processes.items() if proc.pid}
            before = cpu_seconds(pids)
            wall_s = asyncio.run(drain(stack.edge_address, args.tasks))
            after = cpu_seconds(pids)
    spent = {name: after[name] - before[name] for name in pids}
    total = sum(spent.values())
    print(f"{args.tasks:,} no-op tasks, {args.workers} workers x {args.slots} slots: drained in {wall_s:.2f} s")
    print(f"  {args.tasks / wall_s:,.0f} tasks/s; CPU used {total:.2f} s of {2 * wall_s:.2f} s on 2 cores")
    print(f"  {'process':14s} {'CPU s':>7s} {'ms per task':>12s}")
    for name in sorted(spent, key=lambda n: -spent[n]):
        print(f"  {name:14s} {spent[name]:7.2f} {spent[name] / args.tasks * 1000:12.3f}")
    print(f"  {'all':14s} {total:7.2f} {total / args.tasks * 1000:12.3f}")


if __name__ == "__main__":
    main()
