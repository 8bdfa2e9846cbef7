"""A worker's own series: busy and total slots (read when scraped), handler durations, outcomes reported."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import Counter, Histogram

from resilienttask.worker.v1 import worker_pb2
from services.core.deferred import later
from services.core.metrics import PREFIX, RUN_BUCKETS_S, CallbackCollector, Metrics

if TYPE_CHECKING:
    from services.worker.worker import Worker


# The enum's names as label values, computed once rather than on every handler's end.
_OUTCOME_NAMES = {value: name.removeprefix("OUTCOME_").lower() for name, value in worker_pb2.Outcome.items()}


def outcome_name(outcome: int) -> str:
    """succeeded, failed, cancelled or timed_out: the outcome labels the scheduler's series use too."""
    return _OUTCOME_NAMES.get(outcome) or worker_pb2.Outcome.Name(outcome)


class WorkerMetrics:
    """Series recorded as attempts end on this worker: each end noted in a dict, and the notes of one turn of the
    event loop folded into the series at once after it (services.core.deferred), a labelled child's look-up and
    its locks once per kind and outcome, not per task."""

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
        # Not yet folded in, by kind and outcome: handler durations (s) and reports.
        self._durations: dict[tuple[str, int], list[float]] = {}
        self._reports: dict[tuple[str, int], int] = {}

    def handled(self, kind: str, outcome: int, seconds: float) -> None:
        if not self._durations and not self._reports:
            later(self.fold)
        durations = self._durations.get((kind, outcome))
        if durations is None:
            self._durations[kind, outcome] = [seconds]
        else:
            durations.append(seconds)

    def reported(self, kind: str, outcome: int) -> None:
        if not self._durations and not self._reports:
            later(self.fold)
        self._reports[kind, outcome] = self._reports.get((kind, outcome), 0) + 1

    def fold(self) -> None:
        """Add what was noted to the series."""
        durations, self._durations = self._durations, {}
        reports, self._reports = self._reports, {}
        child = self.metrics.child
        for (kind, outcome), seconds in durations.items():
            self.metrics.observe_all(child(self.handler_seconds, kind, outcome_name(outcome)), seconds)
        for (kind, outcome), count in reports.items():
            child(self.reports, kind, outcome_name(outcome)).inc(count)


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
