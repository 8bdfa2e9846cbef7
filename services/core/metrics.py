"""Prometheus metrics of one process: its registry, the series every service shares, and the /metrics server.

Metrics are off unless RTASK_METRICS_PORT is set. Off means free: no registry exists, no HTTP server runs, and
every recording site starts with `current() is None` and returns (one global read per batch, not per task).
On, the process owns one registry (not prometheus_client's global one: nothing else registers into it, and
tests can build one per process) served by prometheus_client's own HTTP server in a daemon thread: scrapes
never wait for the event loop, and the loop never serves HTTP. Values that exist anyway (pool sizes, open
watch streams, busy slots) are read at scrape time by callback collectors, so they cost nothing between scrapes.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

from services.core.settings import ConfigError, setting

log = logging.getLogger(__name__)

PREFIX = "resilienttask"

# Submit → start: from a few milliseconds (an idle pool) to many minutes (a backlog).
QUEUE_WAIT_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
# Start → end of an attempt (and of a handler call): no-op tasks to hours-long jobs.
RUN_BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600)
# One RPC: unary calls take milliseconds; streams (WatchTasks, Connect) are timed to their end.
RPC_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)


@dataclass(frozen=True)
class MetricsConfig:
    """Where a process serves /metrics (port None: metrics off), and how often cluster-wide gauges refresh."""

    port: int | None = setting(
        "RTASK_METRICS_PORT",
        None,
        "Prometheus `/metrics` port (`0`: a free one, printed) ([docs/metrics.md](docs/metrics.md))",
        shown_default="unset: metrics off",
    )
    host: str = setting("RTASK_METRICS_HOST", "127.0.0.1", "the interface `/metrics` is served on")
    # Its Redis lease lasts three intervals, so a dead exporter is replaced within that.
    cluster_interval_ms: int = setting(
        "RTASK_METRICS_CLUSTER_INTERVAL_MS",
        5000,
        "how often the one exporting scheduler recomputes queue depth, oldest age and the worker-pool gauges",
    )

    def __post_init__(self) -> None:
        if self.port is not None and not 0 <= self.port <= 65535:
            raise ConfigError("RTASK_METRICS_PORT must be between 0 and 65535")
        if self.cluster_interval_ms < 100:
            raise ConfigError("RTASK_METRICS_CLUSTER_INTERVAL_MS must be at least 100")

    @property
    def enabled(self) -> bool:
        return self.port is not None


class Metrics:
    """The registry of one process and the series its code records into (task transitions, RPCs)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.submitted = Counter(f"{PREFIX}_tasks_submitted", "Tasks submitted (committed)", ["kind"], registry=r)
        self.started = Counter(
            f"{PREFIX}_tasks_started", "Attempts started (RUNNING committed), reclaims included", ["kind"], registry=r
        )
        self.finished = Counter(
            f"{PREFIX}_tasks_finished", "Tasks that reached a terminal state", ["kind", "outcome"], registry=r
        )
        self.retries = Counter(f"{PREFIX}_task_retries", "Failed attempts queued again", ["kind"], registry=r)
        self.dead_lettered = Counter(
            f"{PREFIX}_tasks_dead_lettered", "Tasks failed with no attempt left", ["kind"], registry=r
        )
        self.reclaimed = Counter(
            f"{PREFIX}_tasks_reclaimed", "Attempts taken over from a worker that went silent", ["kind"], registry=r
        )
        self.fenced = Counter(
            f"{PREFIX}_reports_fenced", "Worker reports refused: stale fence or not the holder", ["kind"], registry=r
        )
        self.queue_wait = Histogram(
            f"{PREFIX}_task_queue_wait_seconds",
            "Submit to start of a task's first attempt",
            ["kind"],
            buckets=QUEUE_WAIT_BUCKETS_S,
            registry=r,
        )
        self.run = Histogram(
            f"{PREFIX}_task_run_seconds",
            "Start to end of an attempt, by the attempt's outcome",
            ["kind", "outcome"],
            buckets=RUN_BUCKETS_S,
            registry=r,
        )
        self.rpc_handled = Counter(
            f"{PREFIX}_grpc_server_handled",
            "RPCs completed on this server (streams when they end)",
            ["service", "method", "code"],
            registry=r,
        )
        self.rpc_seconds = Histogram(
            f"{PREFIX}_grpc_server_handling_seconds",
            "Time from an RPC's start to its end",
            ["service", "method"],
            buckets=RPC_BUCKETS_S,
            registry=r,
        )

        # Labelled children by (metric, label values): prometheus_client's labels() validates and locks on every
        # call (a few microseconds); the hot paths ask this dict instead. Label sets are small (kinds, outcomes,
        # methods, codes), so it stays small.
        self._children: dict[tuple[MetricWrapperBase, tuple[str, ...]], Any] = {}

    def child(self, metric: MetricWrapperBase, *values: str) -> Any:
        """metric.labels(*values), cached."""
        key = (metric, values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def observe_all(self, child: Any, values: Sequence[float]) -> None:
        """child.observe(v) for each value (child: a histogram's labelled child), the values of one batch at once.

        A histogram's observe takes two locks per value (its sum, its bucket) after a scan of the bounds; a batch
        of a statement's rows takes one per bucket it touches and one for the sum. It reads the child's bounds,
        buckets and sum as prometheus_client's own observe does, and falls back to observe when they are not there.
        """
        bounds, buckets, total = (getattr(child, name, None) for name in ("_upper_bounds", "_buckets", "_sum"))
        if bounds is None or buckets is None or total is None:
            for value in values:
                child.observe(value)
            return
        counts = Tally(bisect_left(bounds, value) for value in values)  # the first bound >= value: its bucket
        total.inc(sum(values))
        for index, n in counts.items():
            buckets[index].inc(n)

    def register(self, collector: Collector) -> None:
        self.registry.register(collector)


_current: Metrics | None = None


def current() -> Metrics | None:
    """The process's metrics, or None when metrics are off (the recording sites then do nothing)."""
    return _current


def install(metrics: Metrics | None) -> None:
    """Make `metrics` the process's (None: off). Entry points call it before building their servers."""
    global _current
    _current = metrics


@dataclass
class MetricsEndpoint:
    """The running /metrics server of a process."""

    server: WSGIServer
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve(config: MetricsConfig, metrics: Metrics) -> MetricsEndpoint:
    """Serve the registry at http://host:port/metrics (port 0: a free one) from a daemon thread."""
    assert config.port is not None
    server, _thread = start_http_server(config.port, addr=config.host, registry=metrics.registry)
    return MetricsEndpoint(server, config.host, server.server_port)


def start(config: MetricsConfig) -> MetricsEndpoint | None:
    """At an entry point: install the process's metrics and serve them, or do nothing when they are off.

    Prints `METRICS address=host:port` (the local stack and operators read it) and logs it.
    """
    if not config.enabled:
        return None
    # No `_created` twin of every counter and histogram: Prometheus' text format does not need them.
    disable_created_metrics()
    metrics = Metrics()
    install(metrics)
    endpoint = serve(config, metrics)
    print(f"METRICS address={endpoint.address}", flush=True)
    log.info("metrics served", extra={"metrics_address": endpoint.address})
    return endpoint


# -- values read at scrape time -----------------------------------------------------------------------------
Samples = Iterable[tuple[Sequence[str], float]]


class CallbackCollector(Collector):
    """Series whose values exist anyway in the process (sizes, counts), read only when scraped.

    `read` returns (label values, value) pairs; it runs on the scrape thread, so it must only read plain
    attributes (ints, lengths), never await or lock.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str],
        read: Callable[[], Samples],
        *,
        counter: bool = False,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = list(labels)
        self.read = read
        self.counter = counter

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        try:
            samples = list(self.read())
        except Exception:  # a read racing a shutdown must not fail the whole scrape
            log.debug("metric read failed", extra={"metric": self.name}, exc_info=True)
            samples = []
        for values, value in samples:
            family.add_metric(list(values), value)
        yield family

    def _family(self) -> GaugeMetricFamily | CounterMetricFamily:
        if self.counter:
            return CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        return GaugeMetricFamily(self.name, self.documentation, labels=self.labels)
