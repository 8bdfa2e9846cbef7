"""What metrics and tracing cost in CPU per task, with the shared machine's other load on both sides at once.

    .venv/bin/python -m bench.observability_cpu [--tasks 6000] [--rounds 3] [--on both|metrics|tracing]

bench/observability_ab.py drains each side in turn, so each drain has the machine to itself; here each round
starts two throwaway local stacks from this checkout, "on" (every process serving Prometheus metrics and
exporting every span over OTLP, 100 % sampling, to a receiver process: bench.observability_sides) and
"off" (neither), and drains the same number of no-op tasks through both at the same time (bench.cpu_share's
drain: SubmitTask calls of 50 replicas through Envoy, 2 workers x 10 slots), so whatever else the machine does
falls on both alike. Compared: the user+system CPU seconds of each side's processes (Envoy, gateways,
scheduler, workers; the stack's own PostgreSQL and Valkey are printed apart) from its first submission to its
last task SUCCEEDED, per task, and the drain's rate; the median of the rounds, and each round's own on/off
ratio. Printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.observability_sides import (
    NOT_OURS,
    PARTS,
    SIDES,
    Receiver,
    by_role,
    drain_with_cpu,
    stack_config,
)
from services.stack.stack import Stack


async def one_round(index: int, tasks: int, workers: int, slots: int, receiver: Receiver, on: tuple[str, ...]) -> dict:
    order = SIDES if index % 2 == 0 else SIDES[::-1]  # which stack starts first alternates
    with tempfile.TemporaryDirectory(prefix="rtask-obs-cpu-") as folder:
        stacks = ExitStack()
        try:
            started = {
                side: await asyncio.to_thread(
                    stacks.enter_context, Stack(stack_config(Path(folder), side, receiver.port, workers, slots, on))
                )
                for side in order
            }
            spans_before = receiver.received().spans
            results = await asyncio.gather(*(drain_with_cpu(started[side], tasks) for side in order))
            by_side = dict(zip(order, results, strict=True))
        finally:
            await asyncio.to_thread(stacks.close)
    round_result: dict[str, Any] = {}
    for side, (wall_s, spent) in by_side.items():
        roles = by_role(spent)
        round_result[side] = {
            "drain_per_s": tasks / wall_s,
            "cpu_ms_per_task": sum(v for role, v in roles.items() if role not in NOT_OURS) / tasks * 1000,
            "roles_ms_per_task": {role: seconds / tasks * 1000 for role, seconds in roles.items()},
        }
    round_result["spans"] = receiver.received().spans - spans_before
    return round_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=6000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--slots", type=int, default=10)
    parser.add_argument(
        "--on", choices=("both", *PARTS), default="both", help='what the "on" side has (the other has neither)'
    )
    args = parser.parse_args()
    load_start = [round(x, 1) for x in os.getloadavg()]
    on = PARTS if args.on == "both" else (args.on,)

    async def run(receiver: Receiver) -> list[dict]:
        rounds = []
        for index in range(args.rounds):
            rounds.append(await one_round(index, args.tasks, args.workers, args.slots, receiver, on))
            r = rounds[-1]
            on_ms, off_ms = r["on"]["cpu_ms_per_task"], r["off"]["cpu_ms_per_task"]
            print(
                f"round {index + 1}: service CPU ms/task on {on_ms:.3f} off {off_ms:.3f} "
                f"({on_ms / off_ms - 1:+.1%}); "
                f"drain on {r['on']['drain_per_s']:.0f} off {r['off']['drain_per_s']:.0f} tasks/s; "
                f"{r['spans']} spans received",
                flush=True,
            )
        return rounds

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with Receiver() as receiver:
        rounds = asyncio.run(run(receiver))
    load_end = [round(x, 1) for x in os.getloadavg()]
    print(
        f"\n{started}, on = {' and '.join(on)}, {args.rounds} rounds of {args.tasks:,} no-op tasks a side, "
        f"{args.workers} workers x "
        f"{args.slots} slots, load average {load_start} -> {load_end}"
    )
    for key, label in (("cpu_ms_per_task", "service CPU per task (ms)"), ("drain_per_s", "no-op drain (tasks/s)")):
        on = statistics.median(r["on"][key] for r in rounds)
        off = statistics.median(r["off"][key] for r in rounds)
        ratios = [r["on"][key] / r["off"][key] - 1 for r in rounds]
        print(
            f"  {label}: on {on:.3f}, off {off:.3f}, on/off {on / off - 1:+.1%}; "
            f"per round {', '.join(f'{x:+.1%}' for x in ratios)} (median {statistics.median(ratios):+.1%})"
        )
    for side in SIDES:
        roles = sorted({role for r in rounds for role in r[side]["roles_ms_per_task"]})
        cells = [
            f"{role} {statistics.median(r[side]['roles_ms_per_task'].get(role, 0.0) for r in rounds):.3f}"
            for role in roles
        ]
        print(f"  CPU ms per task by role, {side}: {', '.join(cells)}")


if __name__ == "__main__":
    main()
