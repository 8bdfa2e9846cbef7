"""The worker's spans of a task: its wait in the queue, each attempt, and the handler run.

With tracing on, for an entry carrying its submission's traceparent:
  task.queue_wait  child of the submission; from the entry's publication (the time in its stream id) to this
                   worker's read. A reclaimed entry has none: its time in the stream was another worker's run.
  task.attempt     child of the submission; from the read until the outcome is settled or the entry is let go
                   (skipped, released, dropped). Its traceparent goes up in StartItem and FinishItem, so the
                   scheduler's task.start and task.finish spans are its children. A retry or a reclaim is
                   another attempt span under the same submission.
  task.handler     child of the attempt; the handler run, current while it runs (log lines carry its trace id).
The task's id and kind are on the queue wait and the attempt; the worker's id is the resource's
service.instance.id. With tracing off, or for an entry without a (sampled) traceparent, every method returns
at once. The spans are services.core.task_spans.TaskSpan: a few microseconds each, and recorded at their end.
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
    from opentelemetry.util.types import AttributeValue

    from services.core.task_spans import TaskSpan

# Open attempt spans are bounded: a worker holds at most its slots' worth of entries, so past this something
# was never let go, and its span is ended rather than kept.
MAX_OPEN_SPANS = 10_000
# The enum names as attribute values, computed once rather than per task.
_DECISIONS = {v: n.removeprefix("START_DECISION_").lower() for n, v in worker_pb2.StartDecision.items()}
_OUTCOMES = {v: n.removeprefix("OUTCOME_").lower() for n, v in worker_pb2.Outcome.items()}


def published_at_ns(entry_ref: str) -> int | None:
    """When a stream entry was added: its id is "<milliseconds>-<sequence>" (see dispatch.parse_ref)."""
    try:
        _, entry_id, _, _ = parse_ref(entry_ref)
    except ValueError:
        return None
    millis, _, _ = entry_id.partition("-")
    return int(millis) * 1_000_000 if millis.isdigit() else None


class AttemptTraces:
    """The open attempt spans of one worker, by entry reference."""

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self._attempts: dict[str, TaskSpan] = {}

    def delivered(self, deliveries: Sequence[Delivery]) -> None:
        """Entries just read or reclaimed: their queue wait ends and their attempt begins."""
        if not tracing.enabled():
            return
        now_ns = time.time_ns()
        for delivery in deliveries:
            if delivery.entry_id in self._attempts:
                continue  # ours already (an entry of ours coming back from XAUTOCLAIM)
            entry = delivery.entry
            parent = tracing.parse_parent(entry.trace_parent)
            # Each span its own attributes: a recorded span keeps its dict until it is exported.
            attempt = tracing.task_span(
                "task.attempt", parent, now_ns, {"task.id": entry.task_id, "task.kind": entry.kind}
            )
            if attempt is None:
                continue
            published_ns = published_at_ns(delivery.entry_id)
            if delivery.reclaimed:
                attempt.attributes["task.reclaimed"] = True
            elif published_ns is not None:
                attributes: dict[str, AttributeValue] = {"task.id": entry.task_id, "task.kind": entry.kind}
                wait = tracing.task_span("task.queue_wait", parent, min(published_ns, now_ns), attributes)
                if wait is not None:
                    wait.end(now_ns)
            if len(self._attempts) >= MAX_OPEN_SPANS:
                self._end(next(iter(self._attempts)), "evicted")
            self._attempts[delivery.entry_id] = attempt

    def parent(self, entry_id: str) -> str:
        """The traceparent of the entry's attempt span, for the scheduler ("" when there is none)."""
        attempt = self._attempts.get(entry_id)
        return attempt.traceparent if attempt is not None else ""

    def decided(self, entry_id: str, result: worker_pb2.StartResult) -> None:
        """The scheduler's answer to a start request: the attempt's number and fence when it runs, else an
        event saying why not (the scheduler's task.start span records the decision either way)."""
        attempt = self._attempts.get(entry_id)
        if attempt is None:
            return
        if result.decision == worker_pb2.START_DECISION_RUN:
            attempt.attributes["task.attempt"] = result.task.attempt
            attempt.attributes["task.fence"] = result.fence
        else:
            attempt.add_event(
                "start decided", {"decision": _DECISIONS.get(result.decision, ""), "reason": result.reason}
            )

    @contextmanager
    def handler(self, entry_id: str) -> Iterator[None]:
        """The handler run as a span under the attempt's, current while it runs."""
        attempt = self._attempts.get(entry_id)
        if attempt is None:
            yield
            return
        run = attempt.child("task.handler", time.time_ns())
        token = run.attach()
        error = ""
        try:
            yield
        except BaseException as exc:
            error = repr(exc)
            raise
        finally:
            run.detach(token)
            run.end(error=error)

    def reported(self, entry_id: str, item: worker_pb2.FinishItem) -> None:
        """The outcome is on its way: the finish item names the attempt's span as its parent."""
        attempt = self._attempts.get(entry_id)
        if attempt is None:
            return
        item.trace_parent = attempt.traceparent
        attempt.attributes["task.outcome"] = _OUTCOMES.get(item.outcome, "")

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
                attempt.attributes["task.let_go"] = reason
            attempt.end()
