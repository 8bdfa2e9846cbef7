"""What metrics and tracing add to one task's latency, the two sides' tasks interleaved under the same load.

    .venv/bin/python -m bench.observability_latency [--tasks 300] [--rounds 2] [--on both|metrics|tracing|none]

bench/observability_ab.py runs its latency scenario on one side, then on the other: minutes apart on a shared
machine, whose other load moves a median by more than what is measured. Here two throwaway local stacks from
this checkout run at once, "on" and "off" (bench.observability_cpu's: every process serving Prometheus metrics
and exporting every span over OTLP at 100 % sampling, against neither), and one task at a time is submitted to
each in turn (on, off, off, on, ...): the two sides' tasks meet the same load within a second of each other.
Each task is the built-in `sleep` kind with no workload; measured from before its SubmitTask call: its
`created_at` and `started_at` (the gateway's submit and the scheduler's start transactions, PostgreSQL's clock on
this host), and when its RUNNING and its SUCCEEDED events reached a WatchTasks stream through Envoy. Printed: the
medians and p90 of each side, and on ÷ off; never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path

from bench.observability_ab import SpanCounter, start_receiver
from bench.observability_cpu import PARTS, SIDES, stack_config
from bench.ours import Watcher
from resilienttask import AsyncClient, TaskStatus
from services.stack.stack import Stack

FIGURES = (
    "submit → created_at",
    "submit → started_at",
    "submit → RUNNING seen",
    "submit → SUCCEEDED seen",
)
Sample = tuple[float, float, float, float]
WARMUP = 20


async def one_task(client: AsyncClient, watcher: Watcher) -> Sample:
    """Seconds from before the submission to its submit transaction, its start transaction, its RUNNING event and
    its SUCCEEDED event."""
    before = time.time()
    (task,) = await client.submit("latency", kind="sleep", workload=0)
    done = await watcher.first(task.id, {TaskStatus.SUCCEEDED}, 30)
    running = await watcher.first(task.id, {TaskStatus.RUNNING}, 1)
    latest = watcher.latest[task.id]
    assert latest.created_at is not None and latest.started_at is not None
    created, started = latest.created_at.timestamp(), latest.started_at.timestamp()
    return created - before, started - before, running - before, done - before


async def one_round(index: int, tasks: int, counter: SpanCounter, port: int, on: tuple[str, ...]) -> dict:
    order = SIDES if index % 2 == 0 else SIDES[::-1]
    samples: dict[str, list[Sample]] = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory(prefix="rtask-obs-lat-") as folder:
        stacks = ExitStack()
        try:
            started = {
                side: await asyncio.to_thread(
                    stacks.enter_context, Stack(stack_config(Path(folder), side, port, 2, 10, on))
                )
                for side in order
            }
            async with AsyncExitStack() as clients:
                watchers = {}
                for side in order:
                    client = await clients.enter_async_context(AsyncClient(started[side].edge_address, timeout=30))
                    await client.signup(f"lat-{uuid.uuid4().hex[:12]}@example.com", "bench password")
                    watcher = Watcher(client)
                    clients.push_async_callback(watcher.close)
                    await watcher.ready()
                    watchers[side] = (client, watcher)
                for i in range(WARMUP + tasks):
                    # on, off, off, on, ...: neither side always goes first.
                    for side in order if i % 2 == 0 else order[::-1]:
                        figures = await one_task(*watchers[side])
                        if i >= WARMUP:
                            samples[side].append(figures)
        finally:
            await asyncio.to_thread(stacks.close)
    return samples


def spread(values: list[float]) -> tuple[float, float]:
    """Median and p90, in ms."""
    ordered = sorted(values)
    return statistics.median(ordered) * 1000, ordered[int(len(ordered) * 0.9)] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=300, help="tasks a side per round (after 20 to warm up)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--on",
        choices=("both", *PARTS, "none"),
        default="both",
        help='what the "on" side has (the other has neither); none: an A/A run, both sides alike',
    )
    args = parser.parse_args()
    load_start = [round(x, 1) for x in os.getloadavg()]
    on = PARTS if args.on == "both" else () if args.on == "none" else (args.on,)

    async def run() -> dict[str, list[Sample]]:
        counter = SpanCounter()
        server, port = await start_receiver(counter)
        merged: dict[str, list[Sample]] = {side: [] for side in SIDES}
        try:
            for index in range(args.rounds):
                samples = await one_round(index, args.tasks, counter, port, on)
                for side in SIDES:
                    merged[side] += samples[side]
                line = []
                for k, figure in enumerate(FIGURES):
                    p50 = {side: spread([s[k] for s in samples[side]])[0] for side in SIDES}
                    line.append(
                        f"{figure} p50 on {p50['on']:.2f} off {p50['off']:.2f} ({p50['on'] / p50['off'] - 1:+.1%})"
                    )
                print(f"round {index + 1}: " + "; ".join(line) + f"; {counter.spans} spans received", flush=True)
        finally:
            await server.stop(grace=1)
        return merged

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    merged = asyncio.run(run())
    load_end = [round(x, 1) for x in os.getloadavg()]
    print(
        f"\n{started}, on = {' and '.join(on) or 'nothing (A/A)'}, {args.rounds} rounds of {args.tasks} tasks a side, "
        "interleaved, "
        f"2 workers x 10 slots, load average {load_start} -> {load_end}"
    )
    for k, figure in enumerate(FIGURES):
        (on50, on90), (off50, off90) = (spread([s[k] for s in merged[side]]) for side in SIDES)
        print(
            f"  {figure} (ms): p50 on {on50:.2f} off {off50:.2f} ({on50 / off50 - 1:+.1%}); "
            f"p90 on {on90:.2f} off {off90:.2f} ({on90 / off90 - 1:+.1%})"
        )


if __name__ == "__main__":
    main()
