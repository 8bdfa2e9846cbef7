"""Gateway process: AuthService, SchedulerService and ScheduleService; stateless, several replicas behind Envoy."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import asyncpg
import redis.asyncio as aioredis

from resilienttask.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    operator_pb2,
    operator_pb2_grpc,
    schedule_pb2,
    schedule_pb2_grpc,
    scheduler_pb2,
)
from services.core import metrics, outbox
from services.core.auth_interceptor import AuthInterceptor
from services.core.config import AuthConfig, DatabaseConfig, RedisConfig, ServerConfig
from services.core.db import create_pool, database_reachable
from services.core.limits import UserLimits
from services.core.pool_metrics import register_pools
from services.core.redis_client import create_redis, redis_reachable
from services.core.server import Service, create_grpc_server
from services.core.settings import nested
from services.gateway.auth_service import AuthServicer
from services.gateway.log_watch import LogWatchConfig
from services.gateway.login_limits import LoginLimitsConfig
from services.gateway.operator_service import OperatorServicer
from services.gateway.schedule_service import ScheduleServicer
from services.gateway.scheduler_service import SchedulerServicer, add_scheduler_service
from services.gateway.watch.config import WatchConfig
from services.gateway.watch.hub import Hub
from services.gateway.watch_metrics import register_watch

SERVICE_NAMES = (
    auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name,
    scheduler_pb2.DESCRIPTOR.services_by_name["SchedulerService"].full_name,
    schedule_pb2.DESCRIPTOR.services_by_name["ScheduleService"].full_name,
    operator_pb2.DESCRIPTOR.services_by_name["OperatorService"].full_name,
)
# Every SchedulerService, ScheduleService and OperatorService call needs a user token; AuthService, health and
# reflection do not.
SCHEDULER_PREFIX = f"/{scheduler_pb2.DESCRIPTOR.services_by_name['SchedulerService'].full_name}/"
SCHEDULE_PREFIX = f"/{schedule_pb2.DESCRIPTOR.services_by_name['ScheduleService'].full_name}/"
OPERATOR_PREFIX = f"/{operator_pb2.DESCRIPTOR.services_by_name['OperatorService'].full_name}/"


@dataclass(frozen=True)
class GatewayConfig:
    server: ServerConfig = nested()
    database: DatabaseConfig = nested()
    redis: RedisConfig = nested()
    auth: AuthConfig = nested()
    watch: WatchConfig = nested("", WatchConfig)
    limits: UserLimits = nested("", UserLimits)
    login: LoginLimitsConfig = nested("", LoginLimitsConfig)
    log_watch: LogWatchConfig = nested("", LogWatchConfig)


@dataclass(frozen=True)
class Gateway:
    """A built gateway: the service to start, and its watch fan-out (which tests observe)."""

    service: Service
    watch_hub: Hub


async def create_server(config: GatewayConfig) -> Service:
    """Build the gateway: stores opened, servicers registered, port bound (not yet started)."""
    return (await create_gateway(config)).service


async def create_gateway(config: GatewayConfig) -> Gateway:
    pool: asyncpg.Pool = await create_pool(config.database)
    redis: aioredis.Redis = create_redis(config.redis)
    interceptor = AuthInterceptor(
        config.auth, (SCHEDULER_PREFIX, SCHEDULE_PREFIX, OPERATOR_PREFIX), config.auth.audience
    )
    server, port, health = create_grpc_server(config.server, service_names=SERVICE_NAMES, interceptors=[interceptor])
    auth = AuthServicer(pool, config.auth, config.login)
    auth_pb2_grpc.add_AuthServiceServicer_to_server(auth, server)
    hub = Hub(pool, redis, config.watch)
    scheduler = SchedulerServicer(pool, redis, watch_hub=hub, limits=config.limits, log_watch=config.log_watch)
    add_scheduler_service(scheduler, server)
    schedule_pb2_grpc.add_ScheduleServiceServicer_to_server(ScheduleServicer(pool, redis, config.limits), server)
    operator_pb2_grpc.add_OperatorServiceServicer_to_server(OperatorServicer(pool, redis), server)
    service = Service(server=server, port=port, health=health, service_names=SERVICE_NAMES)
    service.background += [
        *hub.loops,
        scheduler.watchers.renew_forever,
        scheduler.log_watchers.renew_forever,
        scheduler.log_tail.run,
    ]
    if (measured := metrics.current()) is not None:
        register_pools(measured, database=pool, redis=redis)
        register_watch(measured, hub)
    service.readiness_checks += [lambda: database_reachable(pool), lambda: redis_reachable(redis)]
    service.shutdown_hooks += [
        scheduler.watchers.close,
        scheduler.log_watchers.close,
        auth.close,
        functools.partial(outbox.flush_marks, pool),
        pool.close,
        redis.aclose,
    ]
    return Gateway(service, hub)
