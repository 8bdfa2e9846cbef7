"""The one shape of every service process: factory, health reflecting readiness, reflection, graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.core import metrics, tracing
from services.core.cancellation import cancel_and_wait
from services.core.config import ServerConfig
from services.core.metrics_interceptor import MetricsInterceptor
from services.core.supervision import LoopFactory, LoopSupervisor

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[], Awaitable[bool]]

# The health service name a liveness probe asks about (Kubernetes' `grpc: {service: liveness}`): SERVING as long
# as the process answers gRPC at all, whatever its stores do. Readiness asks about the server as a whole ("").
LIVENESS_SERVICE = "liveness"

# Failed store probes in a row that turn a serving process NOT_SERVING.
PROBE_FAILURES = 2

# Bound request sizes: a submission payload is at most 64 KiB, everything else is far smaller.
MAX_MESSAGE_BYTES = 1 << 20


@dataclass
class Service:
    """A running gRPC server with its health servicer and readiness probes."""

    server: grpc.aio.Server
    port: int
    health: health_aio.HealthServicer
    service_names: Sequence[str]
    readiness_checks: list[ReadinessCheck] = field(default_factory=list)
    shutdown_hooks: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # Long-running loops of the process (sweepers, relays, readers), started with the server; one that ends
    # makes the process NOT_SERVING until it is running again (services.core.supervision).
    background: list[LoopFactory] = field(default_factory=list)
    loops: LoopSupervisor | None = None
    _monitor: asyncio.Task[None] | None = None
    _serving: bool | None = None
    # Store probes failed in a row: a serving process turns NOT_SERVING at the second, so one slow probe on a
    # loaded machine (a pool busy for a second) does not take it out of Envoy's rotation.
    _failed_probes: int = 0
    _probes_pass: bool = False

    async def set_serving(self, serving: bool) -> None:
        """Report every service (and the server as a whole, "") as SERVING or NOT_SERVING."""
        if serving == self._serving:
            return
        self._serving = serving
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *self.service_names):
            await self.health.set(name, status)
        log.info("health changed", extra={"serving": serving})

    async def check_once(self) -> bool:
        """Run every readiness probe; the server is ready only when all pass."""
        results = await asyncio.gather(*(check() for check in self.readiness_checks))
        self._failed_probes = 0 if all(results) else self._failed_probes + 1
        self._probes_pass = self._failed_probes == 0 or (self._serving is True and self._failed_probes < PROBE_FAILURES)
        ready = self._probes_pass and (self.loops is None or self.loops.running())
        await self.set_serving(ready)
        return ready

    async def recheck(self) -> None:
        """check_once, reporting not ready when a probe itself fails."""
        try:
            await self.check_once()
        except Exception:  # a probe bug must not kill the monitor; report not ready instead
            log.exception("readiness probe failed")
            await self.set_serving(False)

    async def monitor(self, interval_s: float) -> None:
        """Keep health in line with the reachability of the backing stores and the loops."""
        while True:
            await self.recheck()
            await asyncio.sleep(interval_s)

    async def loops_changed(self) -> None:
        """A loop ended or is back: health follows at once, with the stores as the last probes found them (the
        probes are not run again here, so they keep counting only the monitor's failures in a row)."""
        await self.set_serving(self._probes_pass and (self.loops is None or self.loops.running()))

    async def start(self, config: ServerConfig) -> None:
        await self.health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        await self.server.start()
        self.loops = LoopSupervisor(list(self.background), on_change=self.loops_changed)
        self.loops.start()
        await self.check_once()
        self._monitor = asyncio.create_task(self.monitor(config.health_check_interval_s))

    async def stop(self, grace_s: float) -> None:
        """Stop taking new calls, let in-flight calls finish, then run shutdown hooks."""
        if self.loops is not None:
            self.loops.stop_restarting()  # a loop back now would report SERVING while the server drains
        if self._monitor is not None:
            await cancel_and_wait([self._monitor])
        with contextlib.suppress(Exception):
            await self.set_serving(False)
        await self.server.stop(grace_s)
        if self.loops is not None:
            await self.loops.stop()
        for hook in self.shutdown_hooks:
            try:
                await hook()
            except Exception:
                log.exception("shutdown hook failed")


def create_grpc_server(
    config: ServerConfig,
    *,
    service_names: Iterable[str],
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> tuple[grpc.aio.Server, int, health_aio.HealthServicer]:
    """A grpc.aio server with health and reflection, bound to config.host:config.port (0 = free port).

    With metrics on, the RPC metrics interceptor comes first, so it also counts calls the others refuse.
    """
    measured = metrics.current()
    first = [MetricsInterceptor(measured)] if measured is not None else []
    server = grpc.aio.server(
        # The metrics interceptor first, so it also counts calls the others refuse; then tracing (none when
        # tracing is off), so a refused call gets its span too.
        interceptors=[*first, *tracing.server_interceptors(), *interceptors],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", 16 * MAX_MESSAGE_BYTES),
            ("grpc.keepalive_time_ms", 20_000),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ],
    )
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = list(service_names)
    reflection.enable_server_reflection(
        [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        server,
    )
    port = server.add_insecure_port(f"{config.host}:{config.port}")
    if port == 0:
        raise OSError(f"could not bind {config.host}:{config.port}")
    return server, port, health_servicer


async def run_until_signalled(service: Service, config: ServerConfig) -> None:
    """Serve until SIGTERM or SIGINT, then stop gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await service.start(config)
    print(f"READY port={service.port}", flush=True)
    log.info("serving", extra={"port": service.port})
    await stop.wait()
    log.info("stopping", extra={"grace_s": config.shutdown_grace_s})
    await service.stop(config.shutdown_grace_s)
