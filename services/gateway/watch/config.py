"""Settings of the watch fan-out (RTASK_WATCH_* variables), loaded at the gateway's entry point."""

from __future__ import annotations

from dataclasses import dataclass, fields

from services.core.settings import ConfigError, setting


@dataclass(frozen=True)
class WatchConfig:
    """Every value is a positive integer; the unit is in the name."""

    # Keep it well under Envoy's stream idle timeout.
    heartbeat_ms: int = setting(
        "RTASK_WATCH_HEARTBEAT_MS",
        5_000,
        "a silent `WatchTasks` stream sends a heartbeat at least this often (keep it under Envoy's stream idle "
        "timeout)",
    )
    snapshot_limit: int = setting(
        "RTASK_WATCH_SNAPSHOT_LIMIT", 200, "tasks in a watch snapshot (the caller's most recent)"
    )
    queue_limit: int = setting(
        "RTASK_WATCH_QUEUE_LIMIT",
        1_000,
        "events queued for one watcher; a watcher that falls further behind gets a fresh snapshot",
    )
    feed_batch: int = setting("RTASK_WATCH_FEED_BATCH", 1_000, "events per read of the event feed")
    feed_block_ms: int = setting("RTASK_WATCH_FEED_BLOCK_MS", 2_000, "how long one read of the event feed waits")
    replay_page: int = setting("RTASK_WATCH_REPLAY_PAGE", 500, "history entries per read when a watcher resumes")
    batch_events: int = setting(
        "RTASK_WATCH_BATCH_EVENTS",
        200,
        "events ready together sent as one message, to clients that set `accept_batches`",
    )
    workers_coalesce_ms: int = setting(
        "RTASK_WATCH_WORKERS_COALESCE_MS", 100, "worker-pool announcements within this window make one update"
    )
    # A worker whose scheduler died goes stale without announcing it.
    workers_refresh_ms: int = setting(
        "RTASK_WATCH_WORKERS_REFRESH_MS", 5_000, "the worker pool is re-read this often even without announcements"
    )
    stats_timeout_ms: int = setting(
        "RTASK_WATCH_STATS_TIMEOUT_MS",
        2_000,
        "a stats count slower than this is skipped (counts carried forward)",
    )

    def __post_init__(self) -> None:
        for field in fields(self):
            if getattr(self, field.name) < 1:
                raise ConfigError(f"RTASK_WATCH_{field.name.upper()} must be at least 1")
