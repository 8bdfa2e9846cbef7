"""The scheduler's spans of a task: its start and finish transitions, each up to the change-event push after it.

A worker's work request carries, per item, the traceparent of its attempt span (services.worker.tracing).
Items are recorded in batches (one statement for many tasks, one Redis round trip for all their events), so
each traced item gets a span of its own with the batch's times, made after the fact:
  task.start / task.finish   child of the worker's attempt; from the batch's start to its change events
                             pushed, with an event "committed" when its transition committed (the push follows)
The task and worker ids are on the parent attempt span (and the worker's resource), not repeated here.
With tracing off nothing here is called; an item without a (valid, sampled) traceparent gets no span.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from resilienttask.worker.v1 import worker_pb2
from services.core import tracing

if TYPE_CHECKING:
    from opentelemetry.util.types import AttributeValue

# The enum names as attribute values, computed once rather than per task.
_DECISIONS = {v: n.removeprefix("START_DECISION_").lower() for n, v in worker_pb2.StartDecision.items()}
_OUTCOMES = {v: n.removeprefix("OUTCOME_").lower() for n, v in worker_pb2.Outcome.items()}


@dataclass(frozen=True)
class BatchTimes:
    """Epoch nanoseconds: the batch began, its transitions committed, its change events were pushed."""

    began_ns: int
    committed_ns: int
    pushed_ns: int


def _record(
    name: str, trace_parent: str, times: BatchTimes, attributes: dict[str, AttributeValue], error: str = ""
) -> None:
    span = tracing.task_span(name, tracing.parse_parent(trace_parent), times.began_ns, attributes)
    if span is None:
        return
    if not error:
        span.add_event("committed", at_ns=times.committed_ns)
    span.end(times.pushed_ns, error)


def record_work(
    finishes: Sequence[worker_pb2.FinishItem],
    finish_results: Sequence[worker_pb2.FinishResult],
    starts: Sequence[worker_pb2.StartItem],
    start_results: Sequence[worker_pb2.StartResult],
    times: BatchTimes,
) -> None:
    """Spans for the traced items of one recorded batch (results in the items' order). The worker is not
    written: it is the parent attempt span's resource."""
    for finish, verdict in zip(finishes, finish_results, strict=True):
        if finish.trace_parent:
            attributes: dict[str, AttributeValue] = {
                "task.outcome": _OUTCOMES.get(finish.outcome, ""),
                "task.accepted": verdict.accepted,
            }
            if verdict.reason:
                attributes["task.refused"] = verdict.reason
            _record("task.finish", finish.trace_parent, times, attributes)
    for start, result in zip(starts, start_results, strict=True):
        if start.trace_parent:
            attributes = {"task.decision": _DECISIONS.get(result.decision, "")}
            if result.reason:
                attributes["task.reason"] = result.reason
            _record("task.start", start.trace_parent, times, attributes)


def record_failure(
    finishes: Sequence[worker_pb2.FinishItem],
    starts: Sequence[worker_pb2.StartItem],
    times: BatchTimes,
    error: str,
) -> None:
    """Spans, marked as errors, for the traced items of a batch that could not be recorded."""
    for finish in finishes:
        if finish.trace_parent:
            _record("task.finish", finish.trace_parent, times, {}, error)
    for start in starts:
        if start.trace_parent:
            _record("task.start", start.trace_parent, times, {}, error)
