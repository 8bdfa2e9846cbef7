"""Worker settings, built from the environment at the entry point only."""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass

from services.core.config import RedisConfig, ServerConfig
from services.core.settings import ConfigError, nested, setting
from services.core.worker_credentials import EnrolmentConfig
from services.worker.isolation import IsolationConfig
from services.worker.logs import LogShipConfig

# What a self-fenced handler's stop may take beyond the cancel grace (the fence timer firing late on a busy
# event loop, the kill and its reaping), and what a reset of an entry's idle time may lag behind the moment
# the worker counts it from: the least margin between a handler's stop and its entry becoming reclaimable.
FENCE_SLACK_MS = 250


def default_worker_id() -> str:
    """hostname-pid-random: unique per process, so a restarted worker is a new consumer."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class WorkerConfig:
    """How one worker consumes the dispatch stream and talks to the scheduler."""

    worker_id: str = setting(
        "RTASK_WORKER_ID",
        help="the worker's id (1-128 of `A-Za-z0-9._:-`), enrolled once: a second process under an id already "
        "enrolled is refused",
        factory=default_worker_id,
        shown_default="`hostname-pid-random`",
    )
    # Workers connect directly: the edge would add two hops to every message.
    scheduler_addr: str = setting(
        "RTASK_SCHEDULER_ADDR",
        help="the schedulers' `host:port`, comma-separated, or one name resolving to all of them; workers connect "
        "directly (the public edge does not route `WorkerService`)",
        shown_default="`make up`: every scheduler it starts",
    )
    slots: int = setting("RTASK_WORKER_SLOTS", 10, "tasks one worker runs at once (1-1024)")
    heartbeat_interval_ms: int = setting(
        "RTASK_WORKER_HEARTBEAT_MS", 1000, "heartbeat interval; each one is answered, and refreshes the held entries"
    )
    # Entries idle this long belong to a worker that stopped heartbeating and may be reclaimed.
    reclaim_idle_ms: int = setting(
        "RTASK_WORKER_RECLAIM_IDLE_MS",
        10_000,
        "an entry unrefreshed this long belongs to a dead worker and is reclaimed by another",
    )
    reclaim_check_interval_ms: int = setting(
        "RTASK_WORKER_RECLAIM_INTERVAL_MS", 1000, "how often a worker looks for entries to reclaim"
    )
    cancel_grace_ms: int = setting(
        "RTASK_WORKER_CANCEL_GRACE_MS",
        500,
        "after a cancel or `max_runtime`, how long a handler may take to stop before it is killed",
    )
    drain_grace_s: float = setting(
        "RTASK_WORKER_DRAIN_GRACE_S",
        10.0,
        "on SIGTERM (or `rtask-worker-drain`), how long running handlers may take to finish before the worker "
        "gives them up",
    )
    read_block_ms: int = setting("RTASK_WORKER_READ_BLOCK_MS", 1000, "how long one read of the dispatch streams waits")
    # No entry is taken or refreshed meanwhile. 0: three heartbeat intervals.
    contact_timeout_ms: int = setting(
        "RTASK_WORKER_CONTACT_TIMEOUT_MS",
        0,
        "the scheduler silent this long: the stream is reopened, and meanwhile the worker takes and refreshes no "
        "entries (0: 3 heartbeats)",
        shown_default="3 heartbeats",
    )
    # A handler is stopped (without a report) when its entry has gone unrefreshed for reclaim_idle_ms minus
    # this margin: cancelled, then killed after cancel_grace_ms, so it has stopped before another worker may
    # reclaim the entry (the rule in services/worker/worker.py). At least cancel_grace_ms + FENCE_SLACK_MS.
    # 0: 30 % of reclaim_idle_ms, or that least margin when it is larger.
    self_fence_margin_ms: int = setting(
        "RTASK_WORKER_SELF_FENCE_MARGIN_MS",
        0,
        "a handler whose entry went unrefreshed for the reclaim idle time minus this margin is cancelled, then "
        "killed after the cancel grace, unreported, so it has stopped before another worker may reclaim it; refused "
        'below `RTASK_WORKER_CANCEL_GRACE_MS` + 250 ms (docs/operations.md, "Partitions")',
        shown_default="30 % of the reclaim idle time, at least the cancel grace + 250 ms",
    )
    outage_grace_ms: int = setting(
        "RTASK_WORKER_OUTAGE_GRACE_MS",
        30_000,
        "out of contact with every scheduler (one restarting), a worker keeps refreshing its entries, and so its "
        "handlers running, for this long; cut off longer, it stops them before others may reclaim their entries",
    )
    imports: tuple[str, ...] = setting(
        "RTASK_WORKER_IMPORTS", (), "modules imported at start-up so their `@task` handlers register"
    )
    # How handler child processes are confined (user, environment).
    isolation: IsolationConfig = nested("", IsolationConfig)
    # Rate bounds and pace of the handlers' log lines.
    logs: LogShipConfig = nested("", LogShipConfig)

    def __post_init__(self) -> None:
        if not self.worker_id:
            raise ConfigError("the worker id must not be empty")
        if not self.scheduler_addrs:
            raise ConfigError("RTASK_SCHEDULER_ADDR is required (host:port of each scheduler, comma-separated)")
        for name in ("slots", "heartbeat_interval_ms", "reclaim_idle_ms", "reclaim_check_interval_ms", "read_block_ms"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if self.outage_grace_ms < 0:
            raise ConfigError("outage_grace_ms must not be negative")
        if self.cancel_grace_ms < 0 or self.drain_grace_s < 0:
            raise ConfigError("grace periods must not be negative")
        if self.reclaim_idle_ms <= 2 * self.heartbeat_interval_ms:
            raise ConfigError("reclaim_idle_ms must exceed two heartbeat intervals, or healthy work gets stolen")
        if self.contact_timeout_ms == 0:
            object.__setattr__(self, "contact_timeout_ms", 3 * self.heartbeat_interval_ms)
        least_margin_ms = self.cancel_grace_ms + FENCE_SLACK_MS
        if self.self_fence_margin_ms == 0:
            object.__setattr__(self, "self_fence_margin_ms", max(self.reclaim_idle_ms * 3 // 10, least_margin_ms))
        if self.self_fence_margin_ms < least_margin_ms:
            raise ConfigError(
                f"self_fence_margin_ms ({self.self_fence_margin_ms}) must be at least cancel_grace_ms "
                f"({self.cancel_grace_ms}) + {FENCE_SLACK_MS}: a self-fenced handler must have been killed before "
                "its entry may be reclaimed elsewhere"
            )
        if self.contact_timeout_ms <= self.heartbeat_interval_ms:
            raise ConfigError("contact_timeout_ms must exceed one heartbeat interval")
        fence_after_ms = self.reclaim_idle_ms - self.self_fence_margin_ms
        if self.self_fence_margin_ms < 0 or fence_after_ms <= max(
            2 * self.heartbeat_interval_ms, self.contact_timeout_ms
        ):
            raise ConfigError(
                "reclaim_idle_ms minus self_fence_margin_ms must exceed two heartbeat intervals and the contact "
                "timeout, or healthy handlers get stopped"
            )

    @property
    def scheduler_addrs(self) -> list[str]:
        return [address.strip() for address in self.scheduler_addr.split(",") if address.strip()]


@dataclass(frozen=True)
class WorkerProcessConfig:
    """Everything the worker process needs: its own settings, the health server, Redis and the enrolment secret
    (never the user key nor the worker key: a worker cannot sign any token)."""

    worker: WorkerConfig = nested()
    server: ServerConfig = nested()
    redis: RedisConfig = nested()
    enrolment: EnrolmentConfig = nested()
