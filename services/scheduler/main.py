"""Entry point of `rtask-scheduler`: configuration from the environment, then serve until signalled."""

from __future__ import annotations

import asyncio
import os

from services.core import metrics
from services.core.config import DatabaseConfig, RedisConfig, ServerConfig, env_float, env_int
from services.core.limits import UserLimits
from services.core.logging import configure_logging
from services.core.observability import observed
from services.core.server import run_until_signalled
from services.core.task_logs import TaskLogConfig
from services.core.tracing import TracingConfig
from services.core.worker_credentials import WorkerKeyConfig
from services.scheduler.app import SchedulerConfig, TakeoverConfig, create_server
from services.scheduler.logs import LogIntakeConfig
from services.scheduler.schedule_firer import FiringConfig
from services.scheduler.store import RetryPolicy
from services.scheduler.sweepers import SweepConfig


async def _serve(metrics_config: metrics.MetricsConfig) -> None:
    config = SchedulerConfig(
        server=ServerConfig.from_env(default_port=50061),
        database=DatabaseConfig.from_env(),
        redis=RedisConfig.from_env(),
        workers=WorkerKeyConfig.from_env(),
        retry=RetryPolicy(
            base_ms=env_int("RTASK_RETRY_BASE_MS", 1000),
            max_ms=env_int("RTASK_RETRY_MAX_MS", 60_000),
        ),
        sweeps=SweepConfig(
            publish_interval_ms=env_int("RTASK_PUBLISH_INTERVAL_MS", 200),
            abandoned_grace_s=float(env_int("RTASK_ABANDONED_GRACE_S", 30)),
            # A queued task whose stream entry is missing this long after its publication is published again
            # (Redis lost the entry: a restart without it on disk, or a cluster failover before the replica had it).
            lost_entry_age_s=env_float("RTASK_LOST_ENTRY_AGE_S", 30.0),
            lost_entry_check_interval_s=env_float("RTASK_LOST_ENTRY_CHECK_S", 10.0),
        ),
        progress_flush_ms=env_int("RTASK_PROGRESS_FLUSH_MS", 100),
        # Defaults to 80 % of the workers' reclaim threshold (the same variable the workers read).
        takeover=TakeoverConfig(
            holder_silent_ms=env_int(
                "RTASK_HOLDER_SILENT_MS", env_int("RTASK_WORKER_RECLAIM_IDLE_MS", 10_000) * 4 // 5
            ),
            # Defaults to two of the workers' heartbeat intervals (the same variable the workers read).
            holder_confirm_ms=env_int("RTASK_HOLDER_CONFIRM_MS", env_int("RTASK_WORKER_HEARTBEAT_MS", 1000) * 2),
        ),
        limits=UserLimits.from_env(),
        metrics=metrics_config,
        firing=FiringConfig(misfire_grace_ms=env_int("RTASK_SCHEDULE_MISFIRE_GRACE_MS", 1000)),
        logs=TaskLogConfig.from_env(),
        log_intake=LogIntakeConfig.from_env(),
    )
    service = await create_server(config)
    await run_until_signalled(service, config.server)


def main() -> None:
    configure_logging(os.environ.get("RTASK_INSTANCE", "scheduler"), os.environ.get("RTASK_LOG_LEVEL", "INFO"))
    metrics_config = metrics.MetricsConfig.from_env()
    with observed(TracingConfig.from_env("scheduler"), metrics_config):
        asyncio.run(_serve(metrics_config))


if __name__ == "__main__":
    main()
