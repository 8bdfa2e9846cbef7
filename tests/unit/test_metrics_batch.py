"""Histogram values of a batch observed at once read the same as each observed alone."""

from __future__ import annotations

from services.core.metrics import Metrics


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
