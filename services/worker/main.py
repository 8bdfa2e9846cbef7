"""Entry point of `rtask-worker`: a consumer-group member that runs task handlers."""

from __future__ import annotations

import asyncio
import os

from services.core.config import RedisConfig, ServerConfig
from services.core.logging import configure_logging
from services.core.redis_client import create_redis, redis_reachable
from services.core.server import Service, create_grpc_server, run_until_signalled


async def _serve() -> None:
    server_config = ServerConfig.from_env(default_port=50071)
    redis = create_redis(RedisConfig.from_env())
    server, port, health = create_grpc_server(server_config, service_names=())
    service = Service(server=server, port=port, health=health, service_names=())
    service.readiness_checks.append(lambda: redis_reachable(redis))
    service.shutdown_hooks.append(redis.aclose)
    await run_until_signalled(service, server_config)


def main() -> None:
    configure_logging(os.environ.get("RTASK_INSTANCE", "worker"), os.environ.get("RTASK_LOG_LEVEL", "INFO"))
    asyncio.run(_serve())


if __name__ == "__main__":
    main()
