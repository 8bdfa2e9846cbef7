"""The two sides every observability benchmark compares, and the OTLP receiver the "on" side exports to.

"on": every process serves Prometheus metrics (the launcher gives each a free port) and exports every span
(OTEL_TRACES_SAMPLER=always_on) over OTLP to a receiver in the benchmark's own process; "off": neither. Each side
is a throwaway local stack from this checkout with its own PostgreSQL and Valkey, 2 workers x 10 slots unless
told otherwise, every per-user limit off (one user's throughput on purpose: docs/limits.md).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from bench.cpu_share import cpu_seconds, drain, drain_as
from resilienttask import AsyncClient
from services.core.limits import UserLimits
from services.stack.stack import Stack, StackConfig

SIDES = ("on", "off")
PARTS = ("metrics", "tracing")
# The stack's own PostgreSQL and Valkey are not our processes; their CPU per task is printed by role all the same.
NOT_OURS = ("postgres", "valkey")


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
        metrics=side == "on" and "metrics" in on,
        extra_env=tracing if side == "on" and "tracing" in on else {},
    )


async def drain_with_cpu(stack: Stack, tasks: int, client: AsyncClient | None = None) -> tuple[float, dict[str, float]]:
    """Drain `tasks` no-ops through the stack (bench.cpu_share's drain, as the client's user, else a new one): the
    seconds it took and the CPU seconds each of its processes spent meanwhile."""
    pids = {name: proc.pid for name, proc in stack.processes.items() if proc.pid}
    before = await asyncio.to_thread(cpu_seconds, pids)
    wall_s = await (drain(stack.edge_address, tasks) if client is None else drain_as(client, tasks))
    after = await asyncio.to_thread(cpu_seconds, pids)
    return wall_s, {name: after[name] - before[name] for name in pids}


def by_role(spent: dict[str, float]) -> dict[str, float]:
    """CPU seconds by process role (worker-1 and worker-2 are both "worker")."""
    roles: dict[str, float] = {}
    for name, seconds in spent.items():
        role = name.split("-")[0]
        roles[role] = roles.get(role, 0.0) + seconds
    return roles
