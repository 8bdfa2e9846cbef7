"""Settings of the watch fan-out, built from RTASK_WATCH_* variables at the gateway's entry point."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields

from services.core.config import ConfigError, env_int


@dataclass(frozen=True)
class WatchConfig:
    """Every value is a positive integer; the unit is in the name."""

    # A stream with nothing to say sends a heartbeat this often; keep it well under Envoy's stream idle timeout.
    heartbeat_ms: int = 5_000
    # Tasks in a snapshot: the caller's most recent ones.
    snapshot_limit: int = 200
    # Events waiting for one slow watcher; beyond this it is sent a fresh snapshot instead.
    queue_limit: int = 1_000
    # Feed entries taken per read by the gateway's reader, and how long one read waits for new entries.
    feed_batch: int = 1_000
    feed_block_ms: int = 2_000
    # History entries per read when a watcher replays what it missed.
    replay_page: int = 500
    # Events ready together go out as one message (to clients that take batches), at most this many.
    batch_events: int = 200
    # Worker-pool announcements arriving within this window are sent as one update.
    workers_coalesce_ms: int = 100
    # The pool is re-read this often even without announcements (a worker whose scheduler died goes stale).
    workers_refresh_ms: int = 5_000
    # A stats query slower than this is given up; events then carry stats carried forward from the last counts.
    stats_timeout_ms: int = 2_000

    def __post_init__(self) -> None:
        for field in fields(self):
            if getattr(self, field.name) < 1:
                raise ConfigError(f"RTASK_WATCH_{field.name.upper()} must be at least 1")

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> WatchConfig:
        defaults = cls()
        return cls(
            **{f.name: env_int(f"RTASK_WATCH_{f.name.upper()}", getattr(defaults, f.name), env) for f in fields(cls)}
        )
