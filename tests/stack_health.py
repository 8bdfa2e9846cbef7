"""The stack's health: its recent events, attached to the report of a failed test that used the stack, and a
wait for it to settle after a test shook a store every service depends on.

A test that fails on "no healthy upstream" says nothing about why Envoy saw no healthy replica; the services'
health changes, their loops' crashes and Envoy's failed checks (services/edge/envoy_config.py logs them) do.
"""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.core.server import PROBE_FAILURES
from services.stack.stack import Stack
from tests.helpers import wait_until

# How long every replica must stay healthy, seen from itself and from Envoy, for the stack to count as settled:
# longer than the probes a service may still fail in a row (one a second) before it turns NOT_SERVING, so a
# probe that started while a store was away cannot take a replica out after the wait returned.
SETTLED_FOR_S = PROBE_FAILURES * 1.0 + 1.0

# Substrings of the log lines that explain a replica's health: the services' JSON logs, Envoy's check events.
_MARKERS = (
    '"health changed"',
    '"background loop',
    '"readiness probe failed"',
    "health_check_failure_event",
    "eject_unhealthy_event",
    '"add_healthy_event":{"first_check":false}',
)


def _timestamp(line: str) -> str:
    """The line's ISO timestamp (both log formats carry one), for ordering lines of several files."""
    for key in ('"ts": "', '"timestamp":"'):
        start = line.find(key)
        if start >= 0:
            return line[start + len(key) : start + len(key) + 24]
    return ""


def recent_health_events(log_dir: Path, limit: int = 40) -> str:
    """The last `limit` health events of every process log in `log_dir`, oldest first, each with its file."""
    events: list[tuple[str, str]] = []
    for path in sorted(log_dir.glob("*.log")):
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        events += [
            (_timestamp(line), f"{path.stem}: {line[:400]}")
            for line in text.splitlines()
            if any(m in line for m in _MARKERS)
        ]
    events.sort()
    return "\n".join(line for _, line in events[-limit:])


def _serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def gateway_health_in_envoy(stack: Stack, name: str) -> str:
    """The health flags Envoy's /clusters shows for one gateway (`healthy`, `/failed_active_hc`, ...)."""
    prefix = f"gateways::{stack.address(name)}::health_flags::"
    with urllib.request.urlopen(f"{stack.admin_url}/clusters", timeout=5) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith(prefix):
                return line.removeprefix(prefix)
    raise AssertionError(f"Envoy has no gateway at {stack.address(name)}")


def wait_settled(stack: Stack, timeout_s: float = 60.0) -> None:
    """Block until every running service of the stack answers SERVING and Envoy routes to every gateway, and
    both have held for SETTLED_FOR_S: a test that restarted a store leaves the next test a stack that serves."""
    services = [
        name
        for name, process in stack.processes.items()
        if name.startswith(("gateway-", "scheduler-", "worker-")) and process.alive() and name in stack.ports
    ]
    gateways = [name for name in services if name.startswith("gateway-")]
    since: list[float] = []

    def held() -> bool:
        serving = all(_serving(stack.address(name)) for name in services)
        if not (serving and all(gateway_health_in_envoy(stack, name) == "healthy" for name in gateways)):
            since.clear()
            return False
        since[:] = since or [time.monotonic()]
        return time.monotonic() - since[0] >= SETTLED_FOR_S

    wait_until(held, timeout_s=timeout_s, interval_s=0.2, message="every service serving, and routed to by Envoy")
