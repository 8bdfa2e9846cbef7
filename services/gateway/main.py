"""Entry point of `rtask-gateway`: configuration from the environment, then serve until signalled."""

from __future__ import annotations

import asyncio
import os

from services.core.config import AuthConfig, DatabaseConfig, RedisConfig, ServerConfig
from services.core.logging import configure_logging
from services.core.server import run_until_signalled
from services.gateway.app import GatewayConfig, create_server
from services.gateway.watch.config import WatchConfig


async def _serve() -> None:
    config = GatewayConfig(
        server=ServerConfig.from_env(default_port=50051),
        database=DatabaseConfig.from_env(),
        redis=RedisConfig.from_env(),
        auth=AuthConfig.from_env(),
        watch=WatchConfig.from_env(),
    )
    service = await create_server(config)
    await run_until_signalled(service, config.server)


def main() -> None:
    configure_logging(os.environ.get("RTASK_INSTANCE", "gateway"), os.environ.get("RTASK_LOG_LEVEL", "INFO"))
    asyncio.run(_serve())


if __name__ == "__main__":
    main()
