"""The worker's spans of a task: its wait in the queue, each attempt, and the handler run.

With tracing on, for an entry carrying its submission's traceparent:
  task.queue_wait  child of the submission; from the entry's publication (the time in its stream id) to this
                   worker's read. A reclaimed entry has none: its time in the stream was another worker's run.
  task.attempt     child of the submission; from the read until the outcome is settled or the entry is let go
                   (skipped, released, dropped). Its traceparent goes up in StartItem and FinishItem, so the
                   scheduler's task.start and task.finish spans are its children. A retry or a reclaim is
                   another attempt span under the same submission.
  task.handler     child of the attempt; the handler run, current while it runs (log lines carry its trace id).
With tracing off, or for an entry without a traceparent, every method returns at once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from resilienttask.worker.v1 import worker_pb2
from services.core import tracing
from services.core.dispatch import parse_ref
from services.worker.consumer import Delivery

if TYPE_CHECKING:
    from opentelemetry.trace import Span

# Open attempt spans are bounded: a worker holds at most its slots' worth of entries, so past this something
# was never let go, and its span is ended rather than kept.
MAX_OPEN_SPANS = 10_000


def published_at_ns(entry_ref: str) -> int | None:
    """When a stream entry was added: its id is "<milliseconds>-<sequence>" (see dispatch.parse_ref)."""
    try:
        _, entry_id, _ = parse_ref(entry_ref)
    except ValueError:
        return None
    millis, _, _ = entry_id.partition("-")
    return int(millis) * 1_000_000 if millis.isdigit() else None


class AttemptTraces:
    """The open attempt spans of one worker, by entry reference."""

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self._attempts: dict[str, Span] = {}

    def delivered(self, deliveries: Sequence[Delivery]) -> None:
        """Entries just read or reclaimed: their queue wait ends and their attempt begins."""
        if not tracing.enabled():
            return
        tracer = tracing.tracer()
        now_ns = time.time_ns()
        for delivery in deliveries:
            if delivery.entry_id in self._attempts:
                continue  # ours already (an entry of ours coming back from XAUTOCLAIM)
            parent = tracing.parse_parent(delivery.entry.trace_parent)
            if parent is None:
                continue
            attributes = {"task.id": delivery.entry.task_id, "task.kind": delivery.entry.kind}
            published_ns = published_at_ns(delivery.entry_id)
            if not delivery.reclaimed and published_ns is not None:
                wait = tracer.start_span(
                    "task.queue_wait", parent, attributes=attributes, start_time=min(published_ns, now_ns)
                )
                wait.end(end_time=now_ns)
            if len(self._attempts) >= MAX_OPEN_SPANS:
                self._end(next(iter(self._attempts)), "evicted")
            self._attempts[delivery.entry_id] = tracer.start_span(
                "task.attempt",
                parent,
                attributes={**attributes, "worker.id": self.worker_id, "task.reclaimed": delivery.reclaimed},
                start_time=now_ns,
            )

    def parent(self, entry_id: str) -> str:
        """The traceparent of the entry's attempt span, for the scheduler ("" when there is none)."""
        attempt = self._attempts.get(entry_id)
        return tracing.parent_of(attempt) if attempt is not None else ""

    def decided(self, entry_id: str, result: worker_pb2.StartResult) -> None:
        """The scheduler's answer to a start request."""
        attempt = self._attempts.get(entry_id)
        if attempt is None:
            return
        decision = worker_pb2.StartDecision.Name(result.decision).removeprefix("START_DECISION_").lower()
        attempt.add_event("start decided", {"decision": decision, "reason": result.reason})
        if result.decision == worker_pb2.START_DECISION_RUN:
            attempt.set_attribute("task.attempt", result.task.attempt)
            attempt.set_attribute("task.fence", result.fence)

    @contextmanager
    def handler(self, entry_id: str) -> Iterator[None]:
        """The handler run as a span under the attempt's, current while it runs."""
        attempt = self._attempts.get(entry_id)
        if attempt is None:
            yield
            return
        from opentelemetry import trace

        with tracing.tracer().start_as_current_span("task.handler", trace.set_span_in_context(attempt)):
            yield

    def reported(self, entry_id: str, item: worker_pb2.FinishItem) -> None:
        """The outcome is on its way: the finish item names the attempt's span as its parent."""
        attempt = self._attempts.get(entry_id)
        if attempt is None:
            return
        item.trace_parent = tracing.parent_of(attempt)
        attempt.set_attribute("task.outcome", worker_pb2.Outcome.Name(item.outcome).removeprefix("OUTCOME_").lower())

    def let_go(self, entry_ids: Sequence[str] | Iterator[str], reason: str = "") -> None:
        """The entries are no longer this worker's business (settled, skipped, released, dropped)."""
        if not self._attempts:
            return
        for entry_id in entry_ids:
            self._end(entry_id, reason)

    def _end(self, entry_id: str, reason: str) -> None:
        attempt = self._attempts.pop(entry_id, None)
        if attempt is not None:
            if reason:
                attempt.set_attribute("task.let_go", reason)
            attempt.end()
