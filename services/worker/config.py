"""Worker settings, built from the environment at the entry point only."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

from services.core.config import ConfigError, RedisConfig, ServerConfig
from services.core.worker_credentials import EnrolmentConfig
from services.worker.isolation import IsolationConfig
from services.worker.logs import LogShipConfig

# What a self-fenced handler's stop may take beyond the cancel grace (the fence timer firing late on a busy
# event loop, the kill and its reaping), and what a reset of an entry's idle time may lag behind the moment
# the worker counts it from: the least margin between a handler's stop and its entry becoming reclaimable.
FENCE_SLACK_MS = 250


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "")
    if raw == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from exc


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    value = float(_number(env, name, default))
    if not value.is_integer():
        raise ConfigError(f"{name} must be an integer, got {env.get(name)!r}")
    return int(value)


def default_worker_id() -> str:
    """hostname-pid-random: unique per process, so a restarted worker is a new consumer."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class WorkerConfig:
    """How one worker consumes the dispatch stream and talks to the scheduler."""

    worker_id: str
    # Where the schedulers are: "host:port" of each, comma-separated (or one name that resolves to all of
    # them, or the edge). Workers connect directly: the edge would add two hops to every message.
    scheduler_addr: str
    slots: int = 10
    heartbeat_interval_ms: int = 1000
    # Entries idle this long belong to a worker that stopped heartbeating and may be reclaimed.
    reclaim_idle_ms: int = 10_000
    reclaim_check_interval_ms: int = 1000
    # After a cancel or max_runtime, how long a handler may take to stop before it is killed.
    cancel_grace_ms: int = 500
    # On SIGTERM, how long running handlers may take to finish before the worker exits anyway.
    drain_grace_s: float = 10.0
    read_block_ms: int = 1000
    # The scheduler silent this long (no answer to heartbeats): the stream is given up and reopened, and
    # no entry is taken or refreshed meanwhile. 0: three heartbeat intervals.
    contact_timeout_ms: int = 0
    # A handler is stopped (without a report) when its entry has gone unrefreshed for reclaim_idle_ms minus
    # this margin: cancelled, then killed after cancel_grace_ms, so it has stopped before another worker may
    # reclaim the entry (the rule in services/worker/worker.py). At least cancel_grace_ms + FENCE_SLACK_MS.
    # 0: 30 % of reclaim_idle_ms, or that least margin when it is larger.
    self_fence_margin_ms: int = 0
    # Out of contact with every scheduler (one restarting), a worker keeps its entries refreshed, and so its
    # handlers running, for this long; cut off longer, it gives its work up to be reclaimed.
    outage_grace_ms: int = 30_000
    # Modules imported at start-up so their @task handlers register.
    imports: tuple[str, ...] = ()
    # How handler child processes are confined (user, environment).
    isolation: IsolationConfig = field(default_factory=IsolationConfig)
    # Rate bounds and pace of the handlers' log lines.
    logs: LogShipConfig = field(default_factory=LogShipConfig)

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

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> WorkerConfig:
        imports = tuple(name.strip() for name in env.get("RTASK_WORKER_IMPORTS", "").split(",") if name.strip())
        return cls(
            worker_id=env.get("RTASK_WORKER_ID", "") or default_worker_id(),
            scheduler_addr=env.get("RTASK_SCHEDULER_ADDR", ""),
            slots=_int(env, "RTASK_WORKER_SLOTS", 10),
            heartbeat_interval_ms=_int(env, "RTASK_WORKER_HEARTBEAT_MS", 1000),
            reclaim_idle_ms=_int(env, "RTASK_WORKER_RECLAIM_IDLE_MS", 10_000),
            reclaim_check_interval_ms=_int(env, "RTASK_WORKER_RECLAIM_INTERVAL_MS", 1000),
            cancel_grace_ms=_int(env, "RTASK_WORKER_CANCEL_GRACE_MS", 500),
            drain_grace_s=_number(env, "RTASK_WORKER_DRAIN_GRACE_S", 10.0),
            read_block_ms=_int(env, "RTASK_WORKER_READ_BLOCK_MS", 1000),
            outage_grace_ms=_int(env, "RTASK_WORKER_OUTAGE_GRACE_MS", 30_000),
            contact_timeout_ms=_int(env, "RTASK_WORKER_CONTACT_TIMEOUT_MS", 0),
            self_fence_margin_ms=_int(env, "RTASK_WORKER_SELF_FENCE_MARGIN_MS", 0),
            imports=imports,
            isolation=IsolationConfig.from_env(env),
            logs=LogShipConfig.from_env(env),
        )


@dataclass(frozen=True)
class WorkerProcessConfig:
    """Everything the worker process needs: its own settings, the health server, Redis and the enrolment secret
    (never the user key nor the worker key: a worker cannot sign any token)."""

    worker: WorkerConfig
    server: ServerConfig
    redis: RedisConfig
    enrolment: EnrolmentConfig

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> WorkerProcessConfig:
        return cls(
            worker=WorkerConfig.from_env(env),
            server=ServerConfig.from_env(env, default_port=50071),
            redis=RedisConfig.from_env(env),
            enrolment=EnrolmentConfig.from_env(env),
        )
