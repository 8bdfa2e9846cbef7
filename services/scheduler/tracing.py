"""The scheduler's spans of a task: its start and finish transitions, each up to the change-event push after it.

A worker's work request carries, per item, the traceparent of the task's submission (the gateway's SubmitTask
span, which the dispatch entry brought to the worker: services.worker.tracing). Items are recorded in batches (one
statement for many tasks, one Redis round trip for all their events), so each traced item gets a span of its own
with the batch's times, made after the fact:
  task.start / task.finish   child of the submission; from the batch's start to its change events pushed, with an
                             event "committed" when its transition committed (the push follows)
Attributes: task.id, task.fence (the attempt's, as on the worker's task.handler span: which attempt a span is of),
worker.id, and the start's decision (task.decision, task.reason) or the finish's outcome (task.outcome,
task.accepted, task.refused). A batch's spans of one name share their times, events and, mostly, attributes: what
they share is written once per batch and each span is its ids and its own task.id and task.fence
(services.core.span_wire.SharedSpans), straight into the export queue. With tracing off nothing here is called;
an item without a (valid, sampled) traceparent gets no span.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from resilienttask.worker.v1 import worker_pb2
from services.core import tracing

if TYPE_CHECKING:
    from opentelemetry.util.types import AttributeValue

    from services.core.span_wire import SharedSpans
    from services.core.task_spans import RemoteParent, TaskEvent

# The enum names as attribute values, computed once rather than per task.
_DECISIONS = {v: n.removeprefix("START_DECISION_").lower() for n, v in worker_pb2.StartDecision.items()}
_OUTCOMES = {v: n.removeprefix("OUTCOME_").lower() for n, v in worker_pb2.Outcome.items()}
# Attributes a batch's spans share, as a hashable key (the same decision, or outcome and verdict).
Shared = tuple[tuple[str, "AttributeValue"], ...]
# One traced item: its traceparent, the attributes it shares with others, its own task.id and task.fence.
Item = tuple[str, Shared, str, int]
_UNPARSED = (0, 0, 0)


@dataclass(frozen=True)
class BatchTimes:
    """Epoch nanoseconds: the batch began, its transitions committed, its change events were pushed."""

    began_ns: int
    committed_ns: int
    pushed_ns: int


def _own(task_id: str, fence: int) -> dict[str, AttributeValue]:
    return {"task.id": task_id, "task.fence": fence} if fence else {"task.id": task_id}


def _record(name: str, worker_id: str, items: Sequence[Item], times: BatchTimes, error: str = "") -> None:
    """A span per item whose traceparent names a sampled span (an error status when error is set)."""
    recorder = tracing.recorder()
    if recorder is None or not items:
        return
    events: tuple[TaskEvent, ...] = () if error else (("committed", times.committed_ns, None),)
    write = recorder.record_encoded
    if write is None:  # a processor that takes no bytes: one TaskSpan each (the same spans)
        for trace_parent, shared, task_id, fence in items:
            attributes: dict[str, AttributeValue] = {"worker.id": worker_id, **dict(shared), **_own(task_id, fence)}
            span = tracing.task_span(name, tracing.parse_parent(trace_parent), times.began_ns, attributes)
            if span is not None:
                span.events = list(events) or None
                span.end(times.pushed_ns, error)
        return
    from services.core.span_wire import SharedSpans, task_fields

    writers: dict[Shared, SharedSpans] = {}
    # The replicas of a submission share its traceparent: parsed once a batch.
    parents: dict[str, RemoteParent | None] = {}
    new_span_id = recorder.ids.generate_span_id
    encoded: list[bytes] = []
    for trace_parent, shared, task_id, fence in items:
        parent = parents.get(trace_parent, _UNPARSED)
        if parent is _UNPARSED:
            parent = parents[trace_parent] = tracing.parse_parent(trace_parent)
        if parent is None or not parent[2] & 1:  # absent, malformed, or its trace not sampled
            continue
        writer = writers.get(shared)
        if writer is None:
            attributes = {"worker.id": worker_id, **dict(shared)}
            writer = writers[shared] = SharedSpans(name, attributes, events, error, (times.began_ns, times.pushed_ns))
        encoded.append(writer.span(parent[0], new_span_id(), parent[1], task_fields(task_id, fence)))
    if encoded:
        write(encoded)


def record_work(
    worker_id: str,
    finishes: Sequence[worker_pb2.FinishItem],
    finish_results: Sequence[worker_pb2.FinishResult],
    starts: Sequence[worker_pb2.StartItem],
    start_results: Sequence[worker_pb2.StartResult],
    times: BatchTimes,
) -> None:
    """Spans for the traced items of one recorded batch (results in the items' order)."""
    finished: list[Item] = []
    for finish, verdict in zip(finishes, finish_results, strict=True):
        if trace_parent := finish.trace_parent:
            shared: Shared = (("task.outcome", _OUTCOMES.get(finish.outcome, "")), ("task.accepted", verdict.accepted))
            if reason := verdict.reason:
                shared += (("task.refused", reason),)
            task = finish.task
            finished.append((trace_parent, shared, task.task_id, task.fence))
    _record("task.finish", worker_id, finished, times)
    started: list[Item] = []
    for start, result in zip(starts, start_results, strict=True):
        if trace_parent := start.trace_parent:
            shared = (("task.decision", _DECISIONS.get(result.decision, "")),)
            if reason := result.reason:
                shared += (("task.reason", reason),)
            started.append((trace_parent, shared, start.task_id, result.fence))
    _record("task.start", worker_id, started, times)


def record_failure(
    worker_id: str,
    finishes: Sequence[worker_pb2.FinishItem],
    starts: Sequence[worker_pb2.StartItem],
    times: BatchTimes,
    error: str,
) -> None:
    """Spans, marked as errors, for the traced items of a batch that could not be recorded."""
    failed = [(f.trace_parent, (), f.task.task_id, f.task.fence) for f in finishes if f.trace_parent]
    _record("task.finish", worker_id, failed, times, error)
    unstarted = [(s.trace_parent, (), s.task_id, 0) for s in starts if s.trace_parent]
    _record("task.start", worker_id, unstarted, times, error)
