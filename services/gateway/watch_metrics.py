"""A gateway's watch fan-out as Prometheus series, read from the hub's counts when scraped."""

from __future__ import annotations

from services.core.metrics import PREFIX, CallbackCollector, Metrics
from services.gateway.watch.hub import Hub


def register_watch(metrics: Metrics, hub: Hub) -> None:
    counts = hub.counts
    metrics.register(
        CallbackCollector(
            f"{PREFIX}_watch_streams_open",
            "WatchTasks streams open on this gateway",
            [],
            lambda: [((), counts.streams_open)],
        )
    )
    metrics.register(
        CallbackCollector(
            f"{PREFIX}_watch_events_delivered",
            "Task change events written to watch streams (one per event per stream)",
            [],
            lambda: [((), counts.events_delivered)],
            counter=True,
        )
    )
    metrics.register(
        CallbackCollector(
            f"{PREFIX}_watch_subscriber_overflows",
            "Times a slow watcher's queue overflowed (its events were dropped and it re-snapshots)",
            [],
            lambda: [((), counts.overflows)],
            counter=True,
        )
    )
