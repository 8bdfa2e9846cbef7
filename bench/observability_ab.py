"""What metrics and tracing cost on the hot path: two live stacks of this checkout, "on" and "off", taking turns.

    .venv/bin/python -m bench.observability_ab [--rounds 8] [--tasks 3000] [--latency-tasks 100] [--quick]
                                               [--on both|metrics|tracing|none] [--doc docs/observability-cost.md]

Both stacks (bench/observability_sides.py: "on" serves Prometheus metrics from every process and exports every
span over OTLP at 100 % sampling to a receiver process; "off" does neither) are up at once: a pair of stacks for
the first half of the rounds, then a fresh pair started in the opposite order for the second half. Each round
- drains `--tasks` no-op tasks through one side's Envoy, then through the other's (which side goes first
  alternates), each after an uncounted drain of PRIMER_TASKS on the same side, so that both measured drains
  follow the same kind of work: each drain has the machine to itself, and a round's two drains run seconds
  apart. Per drain: its rate (first SubmitTask → GetStats counts them all SUCCEEDED) and the CPU our processes
  (Envoy, gateway, scheduler, workers) spent per task;
- submits `--latency-tasks` single tasks to each side in turn (A, B, B, A, ..., A being the round's first side),
  one at a time: submit →
  created (the gateway's submit transaction, `created_at`), → start (the scheduler's start transaction,
  `started_at`; both PostgreSQL's clock on this host) and → SUCCEEDED seen on a WatchTasks stream.

Why both stacks at once: an earlier form of this benchmark ran each side as its own `bench.run`, minutes apart.
On this shared machine the other load changes that much within minutes (the one-minute load average went from
2.5 to 4.4 between the sides of one run), and the median of three such rounds moved by ±15 % between runs of
the same code. Here a round's two sides meet the same load, and more rounds fit in the same time. The second pair
of stacks is there because an A/A run (both sides off) on one pair read the first-started stack's CPU per task
6.7 % below the other's; a stack's own placement is not what is measured.

Figures: a drain's rate and CPU per task are the medians of the rounds' drains ("medians compared"); latency
percentiles are over all of a side's tasks, whose samples interleave with the other side's one by one. The
median of the rounds' own on ÷ off ratios is printed beside them. Printed, never asserted. `--on none` is an
A/A run: both stacks alike, to read the harness's own noise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from bench.figures import percentile
from bench.observability_sides import (
    NOT_OURS,
    PARTS,
    SETTLE_S,
    SIDES,
    Received,
    Receiver,
    by_role,
    drain_with_cpu,
    stack_config,
)
from bench.ours import Watcher, scrape_finished
from resilienttask import AsyncClient, TaskStatus
from services.stack.stack import Stack

REPO = Path(__file__).resolve().parents[1]
TARGET_COST = 0.05
WORKERS, SLOTS = 2, 10  # as `make bench`'s throughput and latency scenarios
WARMUP_TASKS = 500  # one drain a side before the rounds: connections, caches and the first plans
WARMUP_SINGLES = 20
# Before each measured drain, an uncounted one on the same side: without it the first drain of a round, which
# follows the single tasks' idle gaps, ran 15-20 % slower than the second whichever side it was, so the side that
# drained first lost out (seen with --quick).
PRIMER_TASKS = 200


@dataclass
class Side:
    """What one side measured: a drain per round, and every latency sample."""

    drain_per_s: list[float] = field(default_factory=list)
    cpu_ms_per_task: list[float] = field(default_factory=list)
    roles_ms_per_task: list[dict[str, float]] = field(default_factory=list)
    load: list[float] = field(default_factory=list)  # the one-minute load average as each drain started
    to_created_s: list[float] = field(default_factory=list)
    to_start_s: list[float] = field(default_factory=list)
    to_seen_s: list[float] = field(default_factory=list)
    submitted: int = 0


@dataclass(frozen=True)
class Figure:
    label: str
    unit: str
    value: Callable[[Side], float]
    higher_is_better: bool
    per_round: Callable[[Side], list[float]] | None = None  # the rounds' values, where the figure is their median


def _p(samples_s: list[float], q: float) -> float:
    return round(percentile([s * 1000 for s in samples_s], q), 2)


FIGURES = (
    Figure("no-op drain", "tasks/s", lambda s: statistics.median(s.drain_per_s), True, lambda s: s.drain_per_s),
    Figure(
        "service CPU per task, drain",
        "ms",
        lambda s: statistics.median(s.cpu_ms_per_task),
        False,
        lambda s: s.cpu_ms_per_task,
    ),
    Figure("submit → created p50 (the gateway's insert)", "ms", lambda s: _p(s.to_created_s, 0.50), False),
    Figure("submit → start p50", "ms", lambda s: _p(s.to_start_s, 0.50), False),
    Figure("submit → start p99", "ms", lambda s: _p(s.to_start_s, 0.99), False),
    Figure("submit → SUCCEEDED seen p50", "ms", lambda s: _p(s.to_seen_s, 0.50), False),
    Figure("submit → SUCCEEDED seen p99", "ms", lambda s: _p(s.to_seen_s, 0.99), False),
)


def cost(on: float, off: float, higher_is_better: bool) -> float:
    """The fraction by which "on" is worse than "off" (negative: better)."""
    return (off - on) / off if higher_is_better else (on - off) / off


async def one_task(client: AsyncClient, watcher: Watcher) -> tuple[float, float, float]:
    """Seconds from before a single task's SubmitTask call to its submit transaction, its start transaction, and
    its SUCCEEDED event (the transactions' times are PostgreSQL's clock, on this host)."""
    before = time.time()
    (task,) = await client.submit("latency", kind="sleep", workload=0)
    done = await watcher.first(task.id, {TaskStatus.SUCCEEDED}, 30)
    created_at, started_at = watcher.latest[task.id].created_at, watcher.latest[task.id].started_at
    assert created_at is not None and started_at is not None
    return created_at.timestamp() - before, started_at.timestamp() - before, done - before


class Run:
    """The two live stacks, a client and a watch stream on each, and what each side measured."""

    def __init__(self) -> None:
        self.sides = {side: Side() for side in SIDES}
        self.stacks: dict[str, Stack] = {}
        self.watchers: dict[str, tuple[AsyncClient, Watcher]] = {}
        self.on_this_stack = 0  # tasks the current "on" stack ran (its /metrics count them)

    def attach(self, stacks: dict[str, Stack], watchers: dict[str, tuple[AsyncClient, Watcher]]) -> None:
        """The next pair of stacks."""
        self.stacks, self.watchers = stacks, watchers
        self.on_this_stack = 0

    async def drain(self, side: str, tasks: int, counted: bool = True) -> None:
        load = round(os.getloadavg()[0], 2)
        wall_s, spent = await drain_with_cpu(self.stacks[side], tasks, SETTLE_S if counted else 0.0)
        measured = self.sides[side]
        measured.submitted += tasks
        self.on_this_stack += tasks if side == "on" else 0
        if not counted:
            return
        roles = by_role(spent)
        measured.drain_per_s.append(round(tasks / wall_s, 1))
        measured.cpu_ms_per_task.append(
            round(sum(v for role, v in roles.items() if role not in NOT_OURS) / tasks * 1000, 3)
        )
        measured.roles_ms_per_task.append({role: round(v / tasks * 1000, 3) for role, v in roles.items()})
        measured.load.append(load)

    async def singles(self, order: tuple[str, ...], tasks: int, counted: bool = True) -> None:
        for i in range(tasks):
            for side in order if i % 2 == 0 else order[::-1]:  # A, B, B, A, ...
                to_created, to_start, to_seen = await one_task(*self.watchers[side])
                self.sides[side].submitted += 1
                self.on_this_stack += 1 if side == "on" else 0
                if counted:
                    self.sides[side].to_created_s.append(to_created)
                    self.sides[side].to_start_s.append(to_start)
                    self.sides[side].to_seen_s.append(to_seen)

    async def round(self, index: int, tasks: int, singles: int) -> None:
        order = SIDES if index % 2 == 0 else SIDES[::-1]
        for side in order:
            await self.drain(side, PRIMER_TASKS, counted=False)
            await self.drain(side, tasks)
        await self.singles(order, singles)
        on, off = self.sides["on"], self.sides["off"]
        print(
            f"round {index + 1}: drain on {on.drain_per_s[-1]:g} off {off.drain_per_s[-1]:g} tasks/s, "
            f"CPU per task on {on.cpu_ms_per_task[-1]:g} off {off.cpu_ms_per_task[-1]:g} ms "
            f"(load {on.load[-1]:g} / {off.load[-1]:g})",
            flush=True,
        )


def head() -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()


def render(
    run: Run, on: tuple[str, ...], args: argparse.Namespace, received: Received, scraped: dict[str, int] | None
) -> str:
    sides = run.sides
    what_on = (
        "every process serving Prometheus metrics and exporting every span over OTLP"
        if on == PARTS
        else {"metrics": "metrics only", "tracing": "tracing only"}.get(on[0], "")
        if on
        else "nothing (an A/A run)"
    )
    lines = [
        "# What metrics and tracing cost on the hot path",
        "",
        f"`python -m bench.observability_ab` (run by `make bench` and `make bench-observability`), "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {head()}. Two local stacks of this "
        f"checkout up at once, {WORKERS} workers x {SLOTS} slots each, own PostgreSQL and Valkey each: **on** = "
        f"{what_on}, **off** = neither; half of the rounds on one pair of stacks, half on a second pair started in "
        f"the opposite order. {args.rounds} rounds; in each, {args.tasks:,} no-op tasks drained through one side's "
        f"Envoy and then the other's (the first side alternates; each drain after an uncounted one of "
        f"{PRIMER_TASKS} on its side, its CPU read {SETTLE_S:g} s after its end, so that the export of its last "
        f"spans counts), then {args.latency_tasks} single tasks submitted to each side in turn, one at a time. "
        "Load average "
        f"{args.load_start} at the start, {[round(x, 2) for x in os.getloadavg()]} at the end (2 cores, shared).",
        "",
        f"| figure | on | off | cost | within {TARGET_COST:.0%} | median of the rounds' on ÷ off (drain: below 1 is "
        "worse; CPU: above 1) |",
        "|---|---|---|---|---|---|",
    ]
    for figure in FIGURES:
        on_value, off_value = figure.value(sides["on"]), figure.value(sides["off"])
        share = cost(on_value, off_value, figure.higher_is_better)
        paired = ""
        if figure.per_round is not None:
            ratios = [a / b for a, b in zip(figure.per_round(sides["on"]), figure.per_round(sides["off"]), strict=True)]
            paired = f"{statistics.median(ratios):.3f}"
        lines.append(
            f"| {figure.label} ({figure.unit}) | {on_value:g} | {off_value:g} | {share:+.1%} | "
            f"{'yes' if share <= TARGET_COST else '**no**'} | {paired} |"
        )
    lines += [
        "",
        "Cost: how much worse **on** is than **off** (a slower drain, more CPU, a longer latency; negative: on was "
        "better, i.e. the machine's noise). The drain and CPU figures are medians of the rounds' drains; the "
        f"latency percentiles are over all {len(sides['on'].to_start_s)} single tasks of a side.",
        "",
        "Each round, the side that drained first on the left (load average as each drain started):",
        "",
        "| round | drain (tasks/s) | CPU per task (ms) | on ÷ off, CPU | submit → start p50, on / off (ms) |",
        "|---|---|---|---|---|",
    ]
    per_round = args.latency_tasks
    for index in range(args.rounds):
        order = SIDES if index % 2 == 0 else SIDES[::-1]
        drains = ", ".join(
            f"{side} {sides[side].drain_per_s[index]:g} (load {sides[side].load[index]:g})" for side in order
        )
        cpus = ", ".join(f"{side} {sides[side].cpu_ms_per_task[index]:g}" for side in order)
        ratio = sides["on"].cpu_ms_per_task[index] / sides["off"].cpu_ms_per_task[index]
        p50s = " / ".join(
            f"{_p(sides[side].to_start_s[index * per_round : (index + 1) * per_round], 0.5):g}" for side in SIDES
        )
        lines.append(f"| {index + 1} | {drains} | {cpus} | {ratio:.3f} | {p50s} |")
    lines += ["", "CPU per task over the drains by process role (ms, median of the rounds):", ""]
    for side in SIDES:
        roles = sorted({role for one in sides[side].roles_ms_per_task for role in one})
        cells = [
            f"{role} {statistics.median(one.get(role, 0.0) for one in sides[side].roles_ms_per_task):.3f}"
            + (" (not ours)" if role in NOT_OURS else "")
            for role in roles
        ]
        lines.append(f"- {side}: {', '.join(cells)}")
    proof = []
    if "tracing" in on:
        proof.append(
            f"the receiver got {received.spans:,} spans ({received.traces:,} traces, from "
            f"{', '.join(received.services) or 'no service'}) for the {sides['on'].submitted:,} tasks of "
            "the **on** side, with 100 % sampling (`OTEL_TRACES_SAMPLER=always_on`); it ran in a process of its "
            f"own on the same 2 cores, as a collector on the same host would, and used {received.cpu_s:.1f} "
            "CPU-seconds"
        )
    if scraped is not None:
        proof.append(
            f"one scrape after the last round found {scraped['endpoints']} `/metrics` endpoints counting "
            f"{scraped['tasks_finished_total']:,} tasks finished (that stack ran {run.on_this_stack:,}); nothing "
            "scraped them while the figures were measured: the cost is that of keeping the series"
        )
    if proof:
        lines += ["", "What **on** did: " + "; ".join(proof) + "."]
    lines.append("")
    return "\n".join(lines)


async def one_pair(
    run: Run, args: argparse.Namespace, on: tuple[str, ...], port: int, rounds: range, start_order: tuple[str, ...]
) -> dict[str, int] | None:
    """Start a pair of stacks in the order given, warm them up, run the rounds on them; the scrape of the "on" one."""
    stacks = ExitStack()
    with tempfile.TemporaryDirectory(prefix="rtask-obs-ab-") as folder:
        try:
            live = {}
            for side in start_order:
                config = stack_config(Path(folder), side, port, WORKERS, SLOTS, on)
                live[side] = await asyncio.to_thread(stacks.enter_context, Stack(config))
            async with AsyncExitStack() as clients:
                watchers = {}
                for side in SIDES:
                    client = await clients.enter_async_context(AsyncClient(live[side].edge_address, timeout=60))
                    await client.signup(f"obs-{uuid.uuid4().hex[:12]}@example.com", "bench password")
                    watcher = Watcher(client)
                    clients.push_async_callback(watcher.close)
                    await watcher.ready()
                    watchers[side] = (client, watcher)
                run.attach(live, watchers)
                for side in SIDES:
                    await run.drain(side, WARMUP_TASKS, counted=False)
                await run.singles(SIDES, WARMUP_SINGLES, counted=False)
                for index in rounds:
                    await run.round(index, args.tasks, args.latency_tasks)
            return await asyncio.to_thread(scrape_finished, live["on"]) if "metrics" in on else None
        finally:
            await asyncio.to_thread(stacks.close)


async def measure(args: argparse.Namespace, on: tuple[str, ...], port: int) -> tuple[Run, dict[str, int] | None]:
    """The rounds on two pairs of stacks, started in opposite orders: an A/A run read the first-started stack's CPU
    per task 6.7 % below the other's over one pair, so no side keeps whatever comes with starting first."""
    run = Run()
    half = args.rounds // 2
    scraped = None
    for rounds, start_order in ((range(half), SIDES), (range(half, args.rounds), SIDES[::-1])):
        if rounds:
            scraped = await one_pair(run, args, on, port, rounds, start_order)
    return run, scraped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--rounds", type=int, default=8, help="a multiple of 4: each side drains first as often on each pair of stacks"
    )
    parser.add_argument("--tasks", type=int, default=3000, help="no-op tasks a side drains per round")
    parser.add_argument("--latency-tasks", type=int, default=100, help="single tasks a side runs per round")
    parser.add_argument("--quick", action="store_true", help="4 rounds of 500 tasks and 20 singles: the harness")
    parser.add_argument(
        "--on",
        choices=("both", *PARTS, "none"),
        default="both",
        help='what the "on" side has (the other has neither); none: an A/A run, both sides alike',
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "observability-ab")
    parser.add_argument("--doc", type=Path, help="also write the page here (docs/observability-cost.md)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.tasks, args.latency_tasks = 4, 500, 20
    if args.rounds < 4 or args.rounds % 4:
        parser.error("--rounds must be a multiple of 4: each side drains first as often on each pair of stacks")
    args.load_start = [round(x, 2) for x in os.getloadavg()]
    on = PARTS if args.on == "both" else () if args.on == "none" else (args.on,)
    with Receiver() as receiver:
        run, scraped = asyncio.run(measure(args, on, receiver.port))
        received = receiver.received()
    text = render(run, on, args, received, scraped)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "observability-ab.md").write_text(text)
    if args.doc is not None:
        args.doc.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
