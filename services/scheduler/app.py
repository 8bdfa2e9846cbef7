"""Scheduler process: WorkerService (what workers call), the supervision loops and the firing of schedules."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from redis.exceptions import RedisError

from resilienttask.worker.v1 import worker_pb2, worker_pb2_grpc
from services.core import metrics, outbox, worker_registry
from services.core.auth_interceptor import AuthInterceptor
from services.core.config import DatabaseConfig, RedisConfig, ServerConfig
from services.core.db import create_pool, database_reachable
from services.core.limits import UserLimits
from services.core.metrics import MetricsConfig
from services.core.pool_metrics import register_pools
from services.core.redis_client import create_redis, redis_reachable
from services.core.server import Service, create_grpc_server
from services.core.settings import nested, setting
from services.core.task_logs import TaskLogConfig
from services.core.tokens import WORKER_AUDIENCE
from services.core.worker_credentials import WorkerKeyConfig
from services.scheduler.cluster_metrics import ClusterGauges
from services.scheduler.connections import ConnectedWorkers, relay_commands
from services.scheduler.due import DueConfig, DuePublisher
from services.scheduler.enrolment import Enrolment, worker_verifier
from services.scheduler.logs import LogIntakeConfig, LogSink
from services.scheduler.progress import ProgressBuffer
from services.scheduler.schedule_firer import FiringConfig, ScheduleFirer
from services.scheduler.store import RetryPolicy
from services.scheduler.sweepers import SweepConfig, run_sweepers
from services.scheduler.takeover import ConfirmedReleases
from services.scheduler.worker_limits import WorkerLimits
from services.scheduler.worker_service import WorkerServicer

SERVICE_NAMES = (worker_pb2.DESCRIPTOR.services_by_name["WorkerService"].full_name,)
# Every WorkerService call needs a worker token (signed with the worker key, its own audience: user tokens
# are refused), except Enrol, which checks the enrolment secret or a worker token itself.
WORKER_PREFIX = f"/{SERVICE_NAMES[0]}/"
ENROL_METHOD = f"{WORKER_PREFIX}Enrol"


@dataclass(frozen=True)
class TakeoverConfig:
    """When a task held by one worker may be started by another."""

    # The holder's last heartbeat seen by a scheduler is older than this (or its stream is gone). Below the
    # workers' reclaim threshold, so a legitimately reclaimed entry is never deferred for long; far above the
    # heartbeat interval, so a live holder never looks silent.
    holder_silent_ms: int = setting(
        "RTASK_HOLDER_SILENT_MS",
        0,
        "a task another worker holds is taken over (through the entry that started it) only once no heartbeat of "
        "the holder was recorded for this long, or its stream ended (0: 80 % of RTASK_WORKER_RECLAIM_IDLE_MS)",
        shown_default="80 % of `RTASK_WORKER_RECLAIM_IDLE_MS`",
    )
    # A holder seen silent is believed only if still seen so this much later (services.scheduler.takeover): a
    # failover that loses Redis writes makes a live holder look silent until its next heartbeat is recorded. Above
    # the workers' heartbeat interval; 0 believes the first look.
    holder_confirm_ms: int | None = setting(
        "RTASK_HOLDER_CONFIRM_MS",
        None,
        "a holder seen silent is believed only if still seen silent this much later (a Valkey failover that lost "
        "writes makes a live holder look silent until its next heartbeat); 0: believed at the first look",
        shown_default="twice `RTASK_WORKER_HEARTBEAT_MS`",
    )
    # The workers' own variables: the defaults above follow them.
    worker_reclaim_idle_ms: int = setting(
        "RTASK_WORKER_RECLAIM_IDLE_MS",
        10_000,
        "an entry unrefreshed this long belongs to a dead worker and is reclaimed by another",
    )
    worker_heartbeat_ms: int = setting(
        "RTASK_WORKER_HEARTBEAT_MS", 1000, "heartbeat interval; each one is answered, and refreshes the held entries"
    )

    def __post_init__(self) -> None:
        if self.holder_silent_ms == 0:
            object.__setattr__(self, "holder_silent_ms", self.worker_reclaim_idle_ms * 4 // 5)
        if self.holder_confirm_ms is None:
            object.__setattr__(self, "holder_confirm_ms", self.worker_heartbeat_ms * 2)

    @property
    def holder_confirm_s(self) -> float:
        assert self.holder_confirm_ms is not None  # set by __post_init__
        return self.holder_confirm_ms / 1000


@dataclass(frozen=True)
class SchedulerConfig:
    server: ServerConfig = nested()
    database: DatabaseConfig = nested()
    redis: RedisConfig = nested()
    workers: WorkerKeyConfig = nested()
    retry: RetryPolicy = nested("", RetryPolicy)
    sweeps: SweepConfig = nested("", SweepConfig)
    progress_flush_ms: int = setting(
        "RTASK_PROGRESS_FLUSH_MS", 100, "workers' progress reports are written to PostgreSQL this often, in batches"
    )
    takeover: TakeoverConfig = nested("", TakeoverConfig)
    worker_limits: WorkerLimits = field(default_factory=WorkerLimits)
    limits: UserLimits = nested("", UserLimits)
    # Used when metrics are on (services.core.metrics.start, at the entry point): the cluster gauges' interval.
    metrics: MetricsConfig = nested("", MetricsConfig)
    due: DueConfig = nested("", DueConfig)
    firing: FiringConfig = nested("", FiringConfig)
    # Handlers' log lines: the store's bounds, and what one worker stream may send.
    logs: TaskLogConfig = nested("", TaskLogConfig)
    log_intake: LogIntakeConfig = nested("", LogIntakeConfig)


async def create_server(config: SchedulerConfig) -> Service:
    """Build the scheduler: stores opened, servicer registered, port bound (not yet started)."""
    pool = await create_pool(config.database)
    redis = create_redis(config.redis)
    interceptor = AuthInterceptor(config.workers, WORKER_PREFIX, WORKER_AUDIENCE, exempt=frozenset({ENROL_METHOD}))
    server, port, health = create_grpc_server(config.server, service_names=SERVICE_NAMES, interceptors=[interceptor])
    workers = ConnectedWorkers()
    progress = ProgressBuffer()
    logs = LogSink(pool, redis, config.logs, config.log_intake)
    emitter = outbox.EventEmitter(pool, redis)
    silent_after_s = config.takeover.holder_silent_ms / 1000

    async def recorded_releases(held: Mapping[str, Collection[tuple[str, float]]]) -> set[str]:
        try:
            return await worker_registry.released_among(redis, held, silent_after_s)
        except (RedisError, OSError):
            return set()  # no record to go by: nobody's task is taken (the start is deferred and asked again)

    released_tasks = ConfirmedReleases(recorded_releases, config.takeover.holder_confirm_s)

    enrolment = Enrolment(pool, config.workers, worker_verifier(config.workers))
    servicer = WorkerServicer(
        pool, redis, workers, progress, config.retry, enrolment, released_tasks, config.worker_limits, logs
    )
    worker_pb2_grpc.add_WorkerServiceServicer_to_server(servicer, server)
    service = Service(server=server, port=port, health=health, service_names=SERVICE_NAMES)
    service.background += [
        lambda: relay_commands(redis, workers),
        lambda: progress.flush_forever(pool, emitter, config.progress_flush_ms / 1000),
        emitter.run,
        logs.run,
        lambda: run_sweepers(pool, redis, config.sweeps, config.limits),
        DuePublisher(pool, redis, config.limits.max_active_tasks, config.due).run,
        ScheduleFirer(pool, redis, config.limits, config.firing).run,
    ]
    service.readiness_checks += [lambda: database_reachable(pool), lambda: redis_reachable(redis)]
    service.shutdown_hooks += [servicer.close, emitter.drain]
    if (measured := metrics.current()) is not None:
        register_pools(measured, database=pool, redis=redis)
        gauges = ClusterGauges(pool, redis, uuid.uuid4().hex, config.metrics.cluster_interval_ms / 1000)
        measured.register(gauges)
        service.background.append(gauges.run)
        service.shutdown_hooks.append(gauges.release)
    service.shutdown_hooks += [pool.close, redis.aclose]
    return service
