"""Which thread of which process spends the CPU that metrics and tracing add: one side-by-side drain.

    .venv/bin/python -m bench.observability_threads [--tasks 4000] [--on both|metrics|tracing]

bench.observability_cpu says how much CPU per task "on" costs; this says where, with the same two stacks
draining at once: per process, the CPU per task of its event loop's thread (the main one) apart from its other
threads by their kernel name (gRPC C-core's `event_engine` and timer threads; `python` for Python threads: the
span export thread, prometheus_client's HTTP server, grpc.aio's poller), its user and system time, and its read
and write system calls and context switches per task (an extra wake-up per task would show there). One round:
a process's figures move by a few hundredths of a millisecond between runs. Printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from bench.cpu_share import drain
from bench.observability_sides import NOT_OURS, PARTS, SIDES, Receiver, stack_config
from services.stack.stack import Stack

TICKS_PER_S = os.sysconf("SC_CLK_TCK")


@dataclass
class Usage:
    """One process's counters so far: CPU seconds by thread group, syscalls and context switches."""

    cpu_s: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    main_user_s: float = 0.0
    main_system_s: float = 0.0
    threads: int = 0
    read_calls: int = 0
    write_calls: int = 0
    voluntary_switches: int = 0
    forced_switches: int = 0


def usage(pid: int) -> Usage:
    """Read from /proc: utime and stime of each thread (grouped by kernel name, the main thread apart)."""
    result = Usage()
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        user_s, system_s = int(stat[11]) / TICKS_PER_S, int(stat[12]) / TICKS_PER_S
        if int(tid) == pid:
            name, result.main_user_s, result.main_system_s = "main", user_s, system_s
        result.cpu_s[name] += user_s + system_s
        result.threads += 1
        switches = dict(line.split(":", 1) for line in status.splitlines() if "ctxt_switches" in line)
        result.voluntary_switches += int(switches["voluntary_ctxt_switches"])
        result.forced_switches += int(switches["nonvoluntary_ctxt_switches"])
    io = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    result.read_calls, result.write_calls = int(io["syscr"]), int(io["syscw"])
    return result


def report(name: str, before: Usage, after: Usage, tasks: int) -> str:
    per_task = 1000 / tasks
    groups = {group: (after.cpu_s[group] - before.cpu_s.get(group, 0.0)) * per_task for group in after.cpu_s}
    others = ", ".join(
        f"{group} {ms:.3f}" for group, ms in sorted(groups.items(), key=lambda g: -g[1]) if group != "main"
    )
    return (
        f"  {name:12s} {sum(groups.values()):.3f} ms a task, {after.threads} threads;"
        f" main {groups.get('main', 0.0):.3f}"
        f" (user {(after.main_user_s - before.main_user_s) * per_task:.3f},"
        f" system {(after.main_system_s - before.main_system_s) * per_task:.3f}); others: {others}\n"
        f"  {'':12s} per task: {(after.read_calls - before.read_calls) / tasks:.2f} reads,"
        f" {(after.write_calls - before.write_calls) / tasks:.2f} writes,"
        f" {(after.voluntary_switches - before.voluntary_switches) / tasks:.2f} voluntary and"
        f" {(after.forced_switches - before.forced_switches) / tasks:.2f} forced context switches"
    )


async def run(tasks: int, workers: int, slots: int, on: tuple[str, ...]) -> None:
    with (
        Receiver() as receiver,
        tempfile.TemporaryDirectory(prefix="rtask-obs-threads-") as folder,
        ExitStack() as stacks,
    ):
        started = {
            side: await asyncio.to_thread(
                stacks.enter_context, Stack(stack_config(Path(folder), side, receiver.port, workers, slots, on))
            )
            for side in SIDES
        }
        pids = {
            side: {n: p.pid for n, p in stack.processes.items() if p.pid and not n.startswith(NOT_OURS)}
            for side, stack in started.items()
        }
        before = {side: {n: usage(pid) for n, pid in named.items()} for side, named in pids.items()}
        walls = await asyncio.gather(*(drain(started[side].edge_address, tasks) for side in SIDES))
        after = {side: {n: usage(pid) for n, pid in named.items()} for side, named in pids.items()}
    load = [round(x, 1) for x in os.getloadavg()]
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, on = {' and '.join(on)}, {tasks:,} no-op tasks a side,"
    )
    print(f"drained in {', '.join(f'{s} {w:.1f} s' for s, w in zip(SIDES, walls, strict=True))}; load {load}")
    for side in SIDES:
        print(f"{side}:")
        for name in sorted(pids[side]):
            print(report(name, before[side][name], after[side][name], tasks))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=4000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--slots", type=int, default=10)
    parser.add_argument("--on", choices=("both", *PARTS), default="both", help='what the "on" side has')
    args = parser.parse_args()
    on = PARTS if args.on == "both" else (args.on,)
    asyncio.run(run(args.tasks, args.workers, args.slots, on))


if __name__ == "__main__":
    main()
