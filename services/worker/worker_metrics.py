"""A worker's own series: busy and total slots (read when scraped), handler durations, outcomes reported."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import Counter, Histogram

from resilienttask.worker.v1 import worker_pb2
from services.core.metrics import PREFIX, RUN_BUCKETS_S, CallbackCollector, Metrics

if TYPE_CHECKING:
    from services.worker.worker import Worker


# The enum's names as label values, computed once rather than on every handler's end.
_OUTCOME_NAMES = {value: name.removeprefix("OUTCOME_").lower() for name, value in worker_pb2.Outcome.items()}


def outcome_name(outcome: int) -> str:
    """succeeded, failed, cancelled or timed_out: the outcome labels the scheduler's series use too."""
    return _OUTCOME_NAMES.get(outcome) or worker_pb2.Outcome.Name(outcome)


class WorkerMetrics:
    """Series recorded as attempts end on this worker."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        r = metrics.registry
        self.handler_seconds = Histogram(
            f"{PREFIX}_worker_handler_seconds",
            "Handler calls on this worker, from start to end (cancel and kill included), by outcome",
            ["kind", "outcome"],
            buckets=RUN_BUCKETS_S,
            registry=r,
        )
        self.reports = Counter(
            f"{PREFIX}_worker_reports",
            "Attempt outcomes this worker handed to its reporter for the scheduler",
            ["kind", "outcome"],
            registry=r,
        )

    def handled(self, kind: str, outcome: int, seconds: float) -> None:
        self.metrics.child(self.handler_seconds, kind, outcome_name(outcome)).observe(seconds)

    def reported(self, kind: str, outcome: int) -> None:
        self.metrics.child(self.reports, kind, outcome_name(outcome)).inc()


def register_worker(metrics: Metrics, worker: Worker) -> None:
    """Export this worker's slots and record its handlers' outcomes."""
    worker.metrics = WorkerMetrics(metrics)
    slots = worker.config.slots
    metrics.register(
        CallbackCollector(
            f"{PREFIX}_worker_slots_busy",
            "Handlers running on this worker now",
            [],
            lambda: [((), len(worker.running))],
        )
    )
    metrics.register(
        CallbackCollector(
            f"{PREFIX}_worker_slots_max",
            "Tasks this worker runs at once at most",
            [],
            lambda: [((), slots)],
        )
    )
