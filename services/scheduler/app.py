"""Scheduler process: WorkerService (what workers call) and the supervision loops."""

from __future__ import annotations

from dataclasses import dataclass, field

from resilienttask.worker.v1 import worker_pb2, worker_pb2_grpc
from services.core import outbox
from services.core.config import AuthConfig, DatabaseConfig, RedisConfig, ServerConfig
from services.core.db import create_pool, database_reachable
from services.core.limits import UserLimits
from services.core.redis_client import create_redis, redis_reachable
from services.core.server import Service, create_grpc_server
from services.core.tokens import WORKER_AUDIENCE
from services.gateway.auth_interceptor import AuthInterceptor
from services.scheduler.connections import ConnectedWorkers, relay_commands
from services.scheduler.progress import ProgressBuffer
from services.scheduler.store import RetryPolicy
from services.scheduler.sweepers import SweepConfig, run_sweepers
from services.scheduler.worker_service import WorkerServicer

SERVICE_NAMES = (worker_pb2.DESCRIPTOR.services_by_name["WorkerService"].full_name,)
# Every WorkerService call needs a worker token (its own audience: user tokens are refused).
WORKER_PREFIX = f"/{SERVICE_NAMES[0]}/"


@dataclass(frozen=True)
class SchedulerConfig:
    server: ServerConfig
    database: DatabaseConfig
    redis: RedisConfig
    auth: AuthConfig
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    sweeps: SweepConfig = field(default_factory=SweepConfig)
    progress_flush_ms: int = 100
    limits: UserLimits = field(default_factory=UserLimits)


async def create_server(config: SchedulerConfig) -> Service:
    """Build the scheduler: stores opened, servicer registered, port bound (not yet started)."""
    pool = await create_pool(config.database)
    redis = create_redis(config.redis)
    interceptor = AuthInterceptor(config.auth, WORKER_PREFIX, WORKER_AUDIENCE)
    server, port, health = create_grpc_server(config.server, service_names=SERVICE_NAMES, interceptors=[interceptor])
    workers = ConnectedWorkers()
    progress = ProgressBuffer()
    emitter = outbox.EventEmitter(pool, redis)
    servicer = WorkerServicer(pool, redis, workers, progress, config.retry)
    worker_pb2_grpc.add_WorkerServiceServicer_to_server(servicer, server)
    service = Service(server=server, port=port, health=health, service_names=SERVICE_NAMES)
    service.background += [
        lambda: relay_commands(redis, workers),
        lambda: progress.flush_forever(pool, emitter, config.progress_flush_ms / 1000),
        emitter.run,
        lambda: run_sweepers(pool, redis, config.sweeps, config.limits),
    ]
    service.readiness_checks += [lambda: database_reachable(pool), lambda: redis_reachable(redis)]
    service.shutdown_hooks += [servicer.close, emitter.drain, pool.close, redis.aclose]
    return service
