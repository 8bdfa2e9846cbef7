"""Entry point of `rtask-gateway`: configuration from the environment, then serve until signalled."""

from __future__ import annotations

import asyncio
import os

from services.core import metrics
from services.core.collector import calm_the_collector
from services.core.config import LogConfig
from services.core.logging import configure_logging
from services.core.observability import observed
from services.core.server import run_until_signalled
from services.core.settings import load, refused_at_start
from services.core.tracing import OtelConfig, TracingConfig
from services.gateway.app import GatewayConfig, create_server

# The gateway's own default for RTASK_PORT.
DEFAULTS = {"RTASK_PORT": 50051}


async def _serve(config: GatewayConfig) -> None:
    service = await create_server(config)
    calm_the_collector()
    await run_until_signalled(service, config.server)


def main() -> None:
    with refused_at_start("rtask-gateway"):
        log = load(LogConfig, os.environ)
        configure_logging(log.instance or "gateway", log.level)
        config = load(GatewayConfig, os.environ, defaults=DEFAULTS)
        tracing = TracingConfig.for_process("gateway", load(OtelConfig, os.environ), log.instance)
        metrics_config = load(metrics.MetricsConfig, os.environ)
    with observed(tracing, metrics_config):
        asyncio.run(_serve(config))


if __name__ == "__main__":
    main()
