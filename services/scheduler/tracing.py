"""The scheduler's spans of a task: its start and finish transitions, and the change-event push after each.

A worker's work request carries, per item, the traceparent of its attempt span (services.worker.tracing).
Items are recorded in batches (one statement for many tasks, one Redis round trip for all their events), so
each traced item gets spans of its own with the batch's times, made after the fact:
  task.start / task.finish   child of the worker's attempt; from the batch's start to its events pushed
    task.events              child of the above; the change-event push to Redis (after the commit)
With tracing off nothing here is called; an item without a (valid) traceparent gets no span.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from resilienttask.worker.v1 import worker_pb2
from services.core import tracing


@dataclass(frozen=True)
class BatchTimes:
    """Epoch nanoseconds: the batch began, its transitions committed, its change events were pushed."""

    began_ns: int
    committed_ns: int
    pushed_ns: int


def _record(
    name: str,
    trace_parent: str,
    task_id: str,
    worker_id: str,
    times: BatchTimes,
    attributes: dict[str, str | bool | int],
    error: str = "",
) -> None:
    parent = tracing.parse_parent(trace_parent)
    if parent is None:
        return
    from opentelemetry import trace
    from opentelemetry.trace import Status, StatusCode

    tracer = tracing.tracer()
    span = tracer.start_span(
        name, parent, attributes={"task.id": task_id, "worker.id": worker_id, **attributes}, start_time=times.began_ns
    )
    if error:
        span.set_status(Status(StatusCode.ERROR, error))
    else:
        push = tracer.start_span("task.events", trace.set_span_in_context(span), start_time=times.committed_ns)
        push.end(end_time=times.pushed_ns)
    span.end(end_time=times.pushed_ns)


def record_work(
    worker_id: str,
    finishes: Sequence[worker_pb2.FinishItem],
    finish_results: Sequence[worker_pb2.FinishResult],
    starts: Sequence[worker_pb2.StartItem],
    start_results: Sequence[worker_pb2.StartResult],
    times: BatchTimes,
) -> None:
    """Spans for the traced items of one recorded batch (results in the items' order)."""
    for finish, verdict in zip(finishes, finish_results, strict=True):
        if finish.trace_parent:
            outcome = worker_pb2.Outcome.Name(finish.outcome).removeprefix("OUTCOME_").lower()
            attributes: dict[str, str | bool | int] = {"task.outcome": outcome, "task.accepted": verdict.accepted}
            if verdict.reason:
                attributes["task.refused"] = verdict.reason
            _record("task.finish", finish.trace_parent, finish.task.task_id, worker_id, times, attributes)
    for start, result in zip(starts, start_results, strict=True):
        if start.trace_parent:
            decision = worker_pb2.StartDecision.Name(result.decision).removeprefix("START_DECISION_").lower()
            attributes = {"task.decision": decision}
            if result.reason:
                attributes["task.reason"] = result.reason
            if result.decision == worker_pb2.START_DECISION_RUN:
                attributes["task.attempt"] = result.task.attempt
            _record("task.start", start.trace_parent, start.task_id, worker_id, times, attributes)


def record_failure(
    worker_id: str,
    finishes: Sequence[worker_pb2.FinishItem],
    starts: Sequence[worker_pb2.StartItem],
    times: BatchTimes,
    error: str,
) -> None:
    """Spans, marked as errors, for the traced items of a batch that could not be recorded."""
    for finish in finishes:
        if finish.trace_parent:
            _record("task.finish", finish.trace_parent, finish.task.task_id, worker_id, times, {}, error)
    for start in starts:
        if start.trace_parent:
            _record("task.start", start.trace_parent, start.task_id, worker_id, times, {}, error)
