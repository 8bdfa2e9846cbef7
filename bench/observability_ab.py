"""What metrics and tracing cost on the hot path: this checkout with both on against the same checkout with both off.

    .venv/bin/python -m bench.observability_ab [--rounds 3] [--quick] [--parts] [--out bench/results/observability-ab]
                                               [--doc docs/observability-cost.md]

Each round runs our throughput (no-op drain, enqueue) and latency (submit → start, submit → result seen) scenarios
twice, "on" and "off", in alternating order so that drift of a shared, noisy machine falls on both sides alike.
Both sides are `python -m bench.run` of this checkout and differ only in their environment:

- on: every process serves Prometheus metrics (RTASK_METRICS_PORT: the launcher gives each a free port of its own,
  and bench/ours.py scrapes each once after the figures, as proof) and exports every span
  (OTEL_TRACES_SAMPLER=always_on) over OTLP to a receiver this process runs: a small grpc.aio TraceService on the
  `opentelemetry-proto` stubs that counts what it is sent, as a collector would receive it;
- off: metrics off in the launcher (bench/ours.py METRICS_SWITCH_ENV) and no RTASK_METRICS_* or OTEL_* variable.

The figure quoted is the median of the rounds; the target is a cost of at most 5 % on each. Printed, never asserted.
--parts also runs each half alone ("metrics", "tracing") in every round, to tell which one costs what.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from bench.checks_ab import FIGURES as RATE_FIGURES
from bench.checks_ab import SIDES, _head
from bench.ours import METRICS_SWITCH_ENV

REPO = Path(__file__).resolve().parents[1]
TARGET_COST = 0.05
# The rate and latency figures, and the CPU our processes spent per task over the drain (bench/ours.py), which a
# shared machine's other load sways less than it does the rate.
FIGURES = [
    *RATE_FIGURES,
    ("service CPU per task, drain", "ms", lambda r: float(r["throughput"]["ours"]["service_cpu_ms_per_task"]), False),
]
# With --parts: each half alone as well, to tell which one costs what.
PARTS = ("metrics", "tracing")
# What the "off" side must not inherit from the shell the benchmark was started in.
OBSERVABILITY_PREFIXES = ("RTASK_METRICS_", "OTEL_")


@dataclass
class SpanCounter(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace receiver that keeps only counts: spans, distinct traces and the services that sent them."""

    spans: int = 0
    requests: int = 0
    traces: set[bytes] = field(default_factory=set)
    services: set[str] = field(default_factory=set)

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.requests += 1
        for resource_spans in request.resource_spans:
            for attribute in resource_spans.resource.attributes:
                if attribute.key == "service.name":
                    self.services.add(attribute.value.string_value)
            for scope_spans in resource_spans.scope_spans:
                self.spans += len(scope_spans.spans)
                self.traces.update(span.trace_id for span in scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


async def start_receiver(counter: SpanCounter) -> tuple[grpc.aio.Server, int]:
    # Batches of many spans: allow messages far above gRPC's default 4 MiB.
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20)])
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(counter, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


def side_env(side: str, receiver_port: int) -> dict[str, str]:
    """The environment of one side: "on", "off", or (with --parts) "metrics" or "tracing" alone."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(OBSERVABILITY_PREFIXES)}
    env[METRICS_SWITCH_ENV] = "on" if side in ("on", "metrics") else "off"
    if side in ("on", "tracing"):
        env.update(
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver_port}",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_TRACES_SAMPLER": "always_on",
            }
        )
    return env


async def run_side(side: str, receiver_port: int, out: Path, quick: bool) -> dict[str, Any]:
    """One `bench.run` of the two scenarios with this side's environment; its results.json."""
    command = [sys.executable, "-m", "bench.run", "--only", "throughput,latency,ours", "--out", str(out)]
    if quick:
        command.append("--quick")
    proc = await asyncio.create_subprocess_exec(
        *command, cwd=REPO, env=side_env(side, receiver_port), stdout=asyncio.subprocess.DEVNULL
    )
    if await proc.wait() != 0:
        raise RuntimeError(f"{side}: bench.run exited with {proc.returncode}")
    results: dict[str, Any] = json.loads((out / "results.json").read_text())["results"]
    for scenario in ("throughput", "latency"):
        if "error" in results[scenario]["ours"]:
            raise RuntimeError(f"{side}: {scenario} failed: {results[scenario]['ours']['error']}")
    return results


def cost(on: float, off: float, higher_is_better: bool) -> float:
    """The fraction by which "on" is worse than "off" (negative: better)."""
    return (off - on) / off if higher_is_better else (on - off) / off


def scraped(result: dict[str, Any]) -> str:
    """What the one scrape after an "on" throughput run found: endpoints and the finished tasks they counted."""
    found = result["throughput"]["ours"].get("metrics_scraped")
    return f"{found['endpoints']} endpoints, {found['tasks_finished_total']} finished" if found else "nothing"


def render(
    rounds: list[dict[str, dict[str, Any]]],
    spans: list[int],
    receiver_cpu_s: list[float],
    counter: SpanCounter,
    load: tuple[list[float], list[float]],
    side_load: list[dict[str, float]],
    quick: bool,
) -> str:
    size = "the quick sizes (`--quick`)" if quick else "the full sizes of `make bench`"
    lines = [
        "# What metrics and tracing cost on the hot path",
        "",
        f"`python -m bench.observability_ab` (run by `make bench` and `make bench-observability`), "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {_head()}: our throughput and latency "
        f"scenarios at {size}, **on** = every process serving Prometheus metrics and exporting every span over "
        f"OTLP, **off** = neither, both from this checkout, alternated {len(rounds)} times in one run; each figure "
        f"is the median of the rounds. Load average {load[0]} at the start, {load[1]} at the end (2 cores, "
        "shared).",
        "",
        f"| figure | on (median) | off (median) | cost | within {TARGET_COST:.0%} | rounds on | rounds off |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, unit, extract, higher in FIGURES:
        values = {side: [extract(r[side]) for r in rounds] for side in SIDES}
        on, off = statistics.median(values["on"]), statistics.median(values["off"])
        share = cost(on, off, higher)
        lines.append(
            f"| {label} ({unit}) | {on:g} | {off:g} | {share:+.1%} | {'yes' if share <= TARGET_COST else '**no**'} | "
            f"{', '.join(f'{v:g}' for v in values['on'])} | {', '.join(f'{v:g}' for v in values['off'])} |"
        )
    if all(part in rounds[0] for part in PARTS):
        lines += [
            "",
            "Each half alone, against the same **off** (cost as above):",
            "",
            "| figure | metrics only (median) | cost | tracing only (median) | cost |",
            "|---|---|---|---|---|",
        ]
        for label, unit, extract, higher in FIGURES:
            off = statistics.median(extract(r["off"]) for r in rounds)
            cells = []
            for part in PARTS:
                value = statistics.median(extract(r[part]) for r in rounds)
                cells += [f"{value:g}", f"{cost(value, off, higher):+.1%}"]
            lines.append(f"| {label} ({unit}) | {' | '.join(cells)} |")
    lines += [
        "",
        "Each round as run, the side that ran first on the left, with the machine's one-minute load average when "
        "each side started (the other load of a shared machine sways a side's figures; a round whose two sides "
        "ran under different loads says less):",
        "",
        "| round | side: load at its start, drain (tasks/s), CPU per task (ms) | on ÷ off, CPU per task |",
        "|---|---|---|",
    ]
    cpu_of = FIGURES[-1][2]
    drain_of = FIGURES[0][2]
    for index, (one, loads) in enumerate(zip(rounds, side_load, strict=True)):
        ran = "; ".join(f"{side} {loads[side]:g}, {drain_of(one[side]):g}, {cpu_of(one[side]):g}" for side in loads)
        lines.append(f"| {index + 1} | {ran} | {cpu_of(one['on']) / cpu_of(one['off']):.3f} |")
    lines += ["", "CPU per task over the drain by process role (ms, median of the rounds):", ""]
    for side in rounds[0]:
        by_role = [r[side]["throughput"]["ours"].get("cpu_ms_per_task_by_role", {}) for r in rounds]
        roles = sorted({role for one in by_role for role in one})
        cells = [f"{role} {statistics.median(one.get(role, 0.0) for one in by_role):.3f}" for role in roles]
        lines.append(f"- {side}: {', '.join(cells)}")
    lines += [
        "",
        "Cost: how much worse **on** is than **off** (slower throughput or longer latency; negative is better, "
        "i.e. within the machine's noise).",
        "",
        f"What **on** exported: {', '.join(str(n) for n in spans)} spans per round to the benchmark's OTLP "
        f"receiver ({len(counter.traces)} traces in all, from {', '.join(sorted(counter.services)) or 'no service'}), "
        "with 100 % sampling (`OTEL_TRACES_SAMPLER=always_on`); every gateway, scheduler and worker served "
        "`/metrics` on a port of its own, and one scrape of them all after each throughput run found "
        f"{'; '.join(scraped(r['on']) for r in rounds)} (per round; the throughput scenario's tasks plus its single "
        "submits). No Prometheus scraped them while the figures were measured: the cost is that of keeping the "
        "series and recording and exporting the spans. The receiver ran on the same 2 cores, as a collector on the "
        f"same host would: it used {', '.join(f'{s:g}' for s in receiver_cpu_s)} CPU-seconds per round.",
        "",
    ]
    return "\n".join(lines)


async def measure(
    rounds: int, out: Path, quick: bool, sides: tuple[str, ...]
) -> tuple[list[dict[str, dict[str, Any]]], list[int], list[float], list[dict[str, float]], SpanCounter]:
    counter = SpanCounter()
    server, port = await start_receiver(counter)
    results: list[dict[str, dict[str, Any]]] = []
    spans: list[int] = []
    # CPU time of this process while a side ran: the receiver's work (the side itself is a child process).
    receiver_cpu_s: list[float] = []
    # The one-minute load average when each side of each round started, in the order they ran.
    side_load: list[dict[str, float]] = []
    try:
        for index in range(rounds):
            # Each round starts one side later: with two sides, on/off then off/on.
            order = sides[index % len(sides) :] + sides[: index % len(sides)]
            round_results = {}
            side_load.append({})
            for side in order:
                side_load[-1][side] = round(os.getloadavg()[0], 2)
                print(f"-- round {index + 1}, {side} (load {side_load[-1][side]}) ...", flush=True)
                before, cpu_before = counter.spans, time.process_time()
                round_results[side] = await run_side(side, port, out / f"round{index + 1}-{side}", quick)
                if side == "on":
                    spans.append(counter.spans - before)
                    receiver_cpu_s.append(round(time.process_time() - cpu_before, 1))
                print(
                    f"   {[f'{label}: {extract(round_results[side]):g}' for label, _, extract, _ in FIGURES]}"
                    f" spans received: {counter.spans - before}",
                    flush=True,
                )
            results.append(round_results)
    finally:
        await server.stop(grace=1)
    return results, spans, receiver_cpu_s, side_load, counter


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="bench.run's quick sizes: for trying the harness")
    parser.add_argument("--parts", action="store_true", help="also metrics alone and tracing alone")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "observability-ab")
    parser.add_argument("--doc", type=Path, help="also write the page here (docs/observability-cost.md)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    load_start = [round(x, 2) for x in os.getloadavg()]
    sides = SIDES + PARTS if args.parts else SIDES
    rounds, spans, receiver_cpu_s, side_load, counter = asyncio.run(measure(args.rounds, args.out, args.quick, sides))
    load = (load_start, [round(x, 2) for x in os.getloadavg()])
    text = render(rounds, spans, receiver_cpu_s, counter, load, side_load, args.quick)
    (args.out / "observability-ab.md").write_text(text)
    if args.doc is not None:
        args.doc.write_text(text)
    print(text)
    if not all(spans):
        print("warning: a round with everything on exported no span: is tracing in this checkout?", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
