"""Histogram values of a batch observed at once read the same as each observed alone."""

from __future__ import annotations

import asyncio

from resilienttask.worker.v1.worker_pb2 import OUTCOME_FAILED, OUTCOME_SUCCEEDED
from services.core.metrics import Metrics
from services.worker.worker_metrics import WorkerMetrics, outcome_name


def _samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the registry but the creation times (they differ between two registries)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in metrics.registry.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def test_observing_a_batch_at_once_is_observing_each_value() -> None:
    one_by_one, at_once = Metrics(), Metrics()
    # On a bound, between bounds, past the last one, zero, and one value many times.
    values = [0.0, 0.005, 0.0051, 0.3, 0.3, 7200.0, 1e9, *[0.02] * 5]
    for value in values:
        one_by_one.child(one_by_one.run, "sleep", "succeeded").observe(value)
    at_once.observe_all(at_once.child(at_once.run, "sleep", "succeeded"), values)
    at_once.observe_all(at_once.child(at_once.run, "sleep", "succeeded"), [])
    assert _samples(at_once) == _samples(one_by_one)
    assert (
        _samples(at_once)[
            ("resilienttask_task_run_seconds_bucket", (("kind", "sleep"), ("le", "0.01"), ("outcome", "succeeded")))
        ]
        == 3
    )


def _worker_series(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {key: value for key, value in _samples(metrics).items() if key[0].startswith("resilienttask_worker_")}


async def test_a_workers_handler_ends_are_folded_in_once_the_loop_turns() -> None:
    """WorkerMetrics notes each end and folds the notes of one turn of the loop in at once: the series then read
    as if each end had been recorded alone."""
    one_by_one, noted = Metrics(), Metrics()
    ends = [("sleep", OUTCOME_SUCCEEDED, 0.004), ("sleep", OUTCOME_SUCCEEDED, 0.3), ("fail", OUTCOME_FAILED, 2.0)]
    alone = WorkerMetrics(one_by_one)
    for kind, outcome, seconds in ends:
        one_by_one.child(alone.handler_seconds, kind, outcome_name(outcome)).observe(seconds)
    worker = WorkerMetrics(noted)
    expected_reports = {"sleep": 2, "fail": 1}
    for kind, outcome, seconds in ends:
        worker.handled(kind, outcome, seconds)
        worker.reported(kind, outcome)
    assert not _worker_series(noted)  # nothing folded in yet
    for _ in range(3):
        await asyncio.sleep(0)
    series = _worker_series(noted)
    for key, value in _worker_series(one_by_one).items():
        assert series[key] == value, key
    for kind, count in expected_reports.items():
        outcome = "succeeded" if kind == "sleep" else "failed"
        assert series["resilienttask_worker_reports_total", (("kind", kind), ("outcome", outcome))] == count
