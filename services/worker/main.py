"""Entry point of `rtask-worker`: a consumer-group member that runs task handlers."""

from __future__ import annotations

import asyncio
import importlib
import os
import signal

from grpc_health.v1 import health_pb2

import services.worker.builtin  # noqa: F401  (registers the built-in kinds)
from services.core import metrics
from services.core.collector import calm_the_collector
from services.core.config import LogConfig
from services.core.logging import configure_logging
from services.core.observability import observed
from services.core.pool_metrics import register_pools
from services.core.redis_client import create_redis, redis_reachable
from services.core.server import Service, create_grpc_server, run_until_signalled
from services.core.settings import load, refused_at_start
from services.core.tracing import OtelConfig, TracingConfig
from services.worker.config import WorkerProcessConfig
from services.worker.worker import DRAINED_SERVICE, Worker
from services.worker.worker_metrics import register_worker


async def _serve(config: WorkerProcessConfig) -> None:
    redis = create_redis(config.redis)
    worker = Worker(config.worker, redis, config.enrolment)
    if (measured := metrics.current()) is not None:
        register_pools(measured, redis=redis)
        register_worker(measured, worker)
    server, port, health = create_grpc_server(config.server, service_names=())
    service = Service(server=server, port=port, health=health, service_names=())

    async def ready() -> bool:
        return worker.ready

    service.readiness_checks += [lambda: redis_reachable(redis), ready]
    # On SIGTERM health turns NOT_SERVING first, then the worker drains, then Redis closes.
    service.shutdown_hooks += [worker.stop, redis.aclose]
    # On SIGUSR1 (rtask-worker-drain, Kubernetes' preStop) the worker drains and stays up; the health service
    # DRAINED_SERVICE turns SERVING once it has, so the hook knows when to let the SIGTERM come.
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, worker.drain, config.worker.drain_grace_s)

    async def report_drained() -> None:
        await worker.drained.wait()
        await health.set(DRAINED_SERVICE, health_pb2.HealthCheckResponse.SERVING)

    reporting = asyncio.create_task(report_drained())
    await worker.start()
    calm_the_collector()
    try:
        await run_until_signalled(service, config.server)
    finally:
        reporting.cancel()


# The worker's own default for RTASK_PORT (its health server).
DEFAULTS = {"RTASK_PORT": 50071}


def main() -> None:
    with refused_at_start("rtask-worker"):
        log = load(LogConfig, os.environ)
        configure_logging(log.instance or "worker", log.level)
        config = load(WorkerProcessConfig, os.environ, defaults=DEFAULTS)
        tracing = TracingConfig.for_process("worker", load(OtelConfig, os.environ), config.worker.worker_id)
        metrics_config = load(metrics.MetricsConfig, os.environ)
    with observed(tracing, metrics_config):
        # User handlers register themselves (@task) when their modules are imported.
        for module in config.worker.imports:
            importlib.import_module(module)
        asyncio.run(_serve(config))


if __name__ == "__main__":
    main()
