"""The two sides every observability benchmark compares, and the OTLP receiver the "on" side exports to.

"on": every process serves Prometheus metrics (the launcher gives each a free port) and exports every span
(OTEL_TRACES_SAMPLER=always_on) over OTLP to a receiver; "off": neither. Each side is a throwaway local stack from
this checkout with its own PostgreSQL and Valkey, 2 workers x 10 slots unless told otherwise, every per-user limit
off (one user's throughput on purpose: docs/limits.md).

The receiver runs in a process of its own (`python -m bench.observability_sides`, started by Receiver), as a
collector on the same host would: inside the benchmark's process, its decoding of each export request held the
event loop that also submits the measured tasks, and slowed the "on" side's drains by that alone.
"""

from __future__ import annotations

import asyncio
import json
import select
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from bench.cpu_share import cpu_seconds, drain
from services.core.limits import UserLimits
from services.edge.config import AuthLimits, RateLimit
from services.stack.stack import Stack, StackConfig

REPO = Path(__file__).resolve().parents[1]
SIDES = ("on", "off")
PARTS = ("metrics", "tracing")
# The stack's own PostgreSQL and Valkey are not our processes; their CPU per task is printed by role all the same.
NOT_OURS = ("postgres", "valkey")
# Every drain signs up a user of its own (its GetStats polls then count its tasks only, not a growing history):
# more sign-ups from one address than the edge's default burst allows.
SIGNUPS = RateLimit(max_tokens=1_000, tokens_per_fill=1_000, fill_interval_s=1.0)
# After a drain, before its CPU is read: the span batch processors' and Envoy's export interval (5 s by default)
# and a little more, so that the export of the drain's last spans is counted in its own CPU and not in whatever
# the machine runs next (the other side's drain).
SETTLE_S = 5.5


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
    """The receiver on this process's event loop (the Receiver process runs one)."""
    # Batches of many spans: allow messages far above gRPC's default 4 MiB.
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20)])
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(counter, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


def stack_config(
    folder: Path, side: str, receiver_port: int, workers: int, slots: int, on: tuple[str, ...] = PARTS
) -> StackConfig:
    """The stack of one side; `on` says what the "on" side has: metrics, tracing, both, or nothing (an A/A run)."""
    tracing = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver_port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_TRACES_SAMPLER": "always_on",
    }
    return StackConfig(
        data_dir=folder / side,
        edge_port=0,
        edge_tls_port=0,
        admin_port=0,
        workers=workers,
        worker_slots=slots,
        bcrypt_cost=4,
        dashboard_dir=None,
        limits=UserLimits.unlimited(),
        auth_limits=AuthLimits(signup_per_address=SIGNUPS),
        metrics=side == "on" and "metrics" in on,
        extra_env=tracing if side == "on" and "tracing" in on else {},
    )


async def drain_with_cpu(stack: Stack, tasks: int, settle_s: float = 0.0) -> tuple[float, dict[str, float]]:
    """Drain `tasks` no-ops through the stack (bench.cpu_share's drain): the seconds it took, and the CPU seconds
    each of its processes spent from its start to `settle_s` after its end."""
    pids = {name: proc.pid for name, proc in stack.processes.items() if proc.pid}
    before = await asyncio.to_thread(cpu_seconds, pids)
    wall_s = await drain(stack.edge_address, tasks)
    await asyncio.sleep(settle_s)
    after = await asyncio.to_thread(cpu_seconds, pids)
    return wall_s, {name: after[name] - before[name] for name in pids}


def by_role(spent: dict[str, float]) -> dict[str, float]:
    """CPU seconds by process role (worker-1 and worker-2 are both "worker")."""
    roles: dict[str, float] = {}
    for name, seconds in spent.items():
        role = name.split("-")[0]
        roles[role] = roles.get(role, 0.0) + seconds
    return roles


@dataclass(frozen=True)
class Received:
    """What the receiver process got so far, and the CPU it spent."""

    spans: int
    traces: int
    services: list[str]
    cpu_s: float


class Receiver:
    """The OTLP receiver in a child process: its port, and what it received when asked."""

    def __init__(self, timeout_s: float = 30.0) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.observability_sides"],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self._ask, self._answers = self.process.stdin, self.process.stdout
        try:
            self.port = int(self._answer(timeout_s))
            self._cpu_at_start = 0.0
            self._cpu_at_start = self.received().cpu_s  # its start-up and imports are not the spans' cost
        except BaseException:
            self.process.kill()
            self.process.wait()
            raise

    def _answer(self, timeout_s: float) -> str:
        ready, _, _ = select.select([self._answers], [], [], timeout_s)
        line = self._answers.readline() if ready else ""
        if not line:
            raise RuntimeError(f"the OTLP receiver did not answer (exit code {self.process.poll()})")
        return line

    def received(self) -> Received:
        """Counts so far; cpu_s from the moment it served."""
        self._ask.write("count\n")
        self._ask.flush()
        counts = Received(**json.loads(self._answer(30.0)))
        return replace(counts, cpu_s=round(counts.cpu_s - self._cpu_at_start, 2))

    def close(self) -> None:
        self._ask.close()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _serve() -> None:
    """The receiver process: prints its port, answers each line on stdin with its counts (JSON), stops at EOF."""
    counter = SpanCounter()
    server, port = await start_receiver(counter)
    print(port, flush=True)
    loop = asyncio.get_running_loop()
    while await loop.run_in_executor(None, sys.stdin.readline):
        counts = Received(counter.spans, len(counter.traces), sorted(counter.services), time.process_time())
        print(json.dumps(asdict(counts)), flush=True)
    await server.stop(0)


if __name__ == "__main__":
    asyncio.run(_serve())
