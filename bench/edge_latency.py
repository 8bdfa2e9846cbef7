"""What Envoy adds to a unary call: the same calls straight to a gateway and through the edge, interleaved.

    .venv/bin/python bench/edge_latency.py                 # starts a throwaway local stack
    .venv/bin/python bench/edge_latency.py --calls 5000
    .venv/bin/python bench/edge_latency.py --edge 127.0.0.1:8080 --gateway 127.0.0.1:50051

Two calls are measured: grpc.health.v1 Check (public, no token: the proxy alone) and SchedulerService
GetStats with a bearer token (Envoy verifies the JWT, the gateway verifies it again and reads PostgreSQL).
Direct and edge calls alternate, so both see the same machine load. Prints median and p99 in milliseconds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from resilienttask.v1 import auth_pb2, auth_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc
from services.core.limits import UserLimits
from services.stack.stack import Stack, StackConfig

Call = Callable[[grpc.Channel], object]


@dataclass(frozen=True)
class Targets:
    edge: str
    gateway: str


@contextmanager
def throwaway_stack() -> Iterator[Targets]:
    with tempfile.TemporaryDirectory(prefix="rtask-bench-") as folder:
        # Thousands of calls of one user on purpose: every per-user limit off (docs/limits.md).
        limits = UserLimits.unlimited()
        config = StackConfig(
            data_dir=Path(folder), edge_port=0, edge_tls_port=0, admin_port=0, workers=0, bcrypt_cost=4, limits=limits
        )
        with Stack(config) as stack:
            yield Targets(stack.edge_address, stack.address(stack.names("gateway")[0]))


def bearer_for_new_user(edge: str) -> tuple[tuple[str, str], ...]:
    with grpc.insecure_channel(edge) as channel:
        reply = auth_pb2_grpc.AuthServiceStub(channel).Signup(
            auth_pb2.SignupRequest(email=f"bench-{uuid.uuid4().hex[:12]}@example.com", password="bench password")
        )
    return (("authorization", f"Bearer {reply.access_token}"),)


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def measure(targets: Targets, call: Call, calls: int, warmup: int) -> tuple[list[float], list[float]]:
    """Latencies in ms of `calls` direct and `calls` edge calls, alternating, after a warm-up of each."""
    direct_ms: list[float] = []
    edge_ms: list[float] = []
    with grpc.insecure_channel(targets.gateway) as direct, grpc.insecure_channel(targets.edge) as edge:
        for i in range(warmup + calls):
            for channel, samples in ((direct, direct_ms), (edge, edge_ms)):
                started = time.perf_counter_ns()
                call(channel)
                if i >= warmup:
                    samples.append((time.perf_counter_ns() - started) / 1e6)
    return direct_ms, edge_ms


def report(name: str, direct_ms: list[float], edge_ms: list[float]) -> None:
    d50, e50 = statistics.median(direct_ms), statistics.median(edge_ms)
    d99, e99 = percentile(direct_ms, 0.99), percentile(edge_ms, 0.99)
    print(f"{name:<38} {'median':>8} {'p99':>8}")
    print(f"  {'direct to a gateway':<36} {d50:>8.3f} {d99:>8.3f}")
    print(f"  {'through Envoy':<36} {e50:>8.3f} {e99:>8.3f}")
    print(f"  {'added by Envoy':<36} {e50 - d50:>8.3f} {e99 - d99:>8.3f}")


def run(targets: Targets, calls: int, warmup: int) -> None:
    metadata = bearer_for_new_user(targets.edge)

    def health(channel: grpc.Channel) -> object:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)

    def stats(channel: grpc.Channel) -> object:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        return stub.GetStats(scheduler_pb2.GetStatsRequest(), metadata=metadata, timeout=10)

    print(f"unary call latency in ms, {calls} calls each way (after {warmup} warm-up calls), one at a time")
    report("grpc.health.v1.Health/Check", *measure(targets, health, calls, warmup))
    report("SchedulerService/GetStats (JWT)", *measure(targets, stats, calls, warmup))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--edge", help="a running edge (host:port); default: start a throwaway stack")
    parser.add_argument("--gateway", help="a gateway of that stack (host:port)")
    args = parser.parse_args()
    if bool(args.edge) != bool(args.gateway):
        parser.error("--edge and --gateway go together")
    if args.edge:
        run(Targets(args.edge, args.gateway), args.calls, args.warmup)
        return 0
    with throwaway_stack() as targets:
        run(targets, args.calls, args.warmup)
    return 0


if __name__ == "__main__":
    sys.exit(main())
