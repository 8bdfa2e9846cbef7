"""The worker's spans of a task: its wait in the queue and each handler run, both children of the submission.

With tracing on, for an entry carrying its submission's (sampled) traceparent:
  task.queue_wait  from the entry's publication (the time in its stream id) to this worker's read. A reclaimed
                   entry has none: its time in the stream was another worker's run. Attributes task.id, task.kind.
  task.handler     the handler run of one attempt, current while it runs (log lines carry its trace id).
                   Attributes task.id, task.kind, and which attempt it is: task.attempt, task.fence (the same
                   fence as the scheduler's task.start and task.finish of the attempt), task.reclaimed (set only
                   when the entry was taken over from a silent worker) and task.stopped (why the handler was
                   stopped, when it was: cancelled, superseded, self-fenced, handback, shutdown).
The submission's traceparent itself goes up in StartItem and FinishItem (sampled_parent), so the scheduler's
task.start and task.finish spans are the submission's children too: every step of every attempt one level under
the submission, no span per attempt in between (and no open span kept per entry between read and settle). With
tracing off, or for an entry without a (sampled) traceparent, every function returns at once. The spans are
services.core.task_spans.TaskSpan: a few microseconds each, recorded at their end.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

from resilienttask.worker.v1 import worker_pb2
from services.core import deferred, tracing
from services.core.dispatch import parse_ref
from services.worker.consumer import Delivery

if TYPE_CHECKING:
    from opentelemetry.util.types import AttributeValue

    from services.core.span_wire import SharedSpans
    from services.core.task_spans import CurrentTokens, Recorder

_NOTHING: AbstractContextManager[None] = nullcontext()


def published_at_ns(entry_ref: str) -> int | None:
    """When a stream entry was added: its id is "<milliseconds>-<sequence>" (see dispatch.parse_ref)."""
    try:
        _, entry_id, _, _ = parse_ref(entry_ref)
    except ValueError:
        return None
    millis, _, _ = entry_id.partition("-")
    return int(millis) * 1_000_000 if millis.isdigit() else None


def queue_waits(deliveries: Sequence[Delivery]) -> None:
    """Entries just read: the queue wait of each (reclaimed entries have none) ends now, and is written once the
    start request that asks about them is on its way: two turns of the loop out (deferred.later, twice), as the
    request is handed to the stream's writer after this step, which writes it at the next turn."""
    if tracing.recorder() is not None:
        deferred.later(deferred.later, write_queue_waits, deliveries, time.time_ns())


def write_queue_waits(deliveries: Sequence[Delivery], now_ns: int) -> None:
    """The queue waits of entries read at now_ns (epoch ns). The waits of one read share their name, end and kind:
    written from shared bytes (span_wire.SharedSpans), straight into the export queue, with no span object each."""
    recorder = tracing.recorder()
    if recorder is None:
        return
    from services.core import span_wire  # the SDK's modules: imported only when tracing is on

    write = recorder.record_encoded
    writers: dict[str, SharedSpans] = {}
    encoded: list[bytes] = []
    for delivery in deliveries:
        if delivery.reclaimed:
            continue
        entry = delivery.entry
        parent = tracing.parse_parent(entry.trace_parent)  # cached: the replicas of a submission share one
        if parent is None or not parent[2] & 1:  # absent, malformed, or its trace not sampled
            continue
        published_ns = published_at_ns(delivery.entry_id)
        if published_ns is None:
            continue
        start_ns = min(published_ns, now_ns)
        if write is None:  # a processor that takes no bytes: a TaskSpan each (the same span)
            wait = tracing.task_span(
                "task.queue_wait", parent, start_ns, {"task.kind": entry.kind, "task.id": entry.task_id}
            )
            if wait is not None:
                wait.end(now_ns)
            continue
        writer = writers.get(entry.kind)
        if writer is None:
            writer = writers[entry.kind] = span_wire.SharedSpans("task.queue_wait", {"task.kind": entry.kind})
        own = span_wire.times(start_ns, now_ns) + span_wire.task_fields(entry.task_id)
        encoded.append(writer.span(parent[0], recorder.ids.generate_span_id(), parent[1], own))
    if encoded and write is not None:
        write(encoded)


def sampled_parent(delivery: Delivery) -> str:
    """The traceparent the scheduler's spans of this entry continue (its submission's), "" when there is none:
    tracing off here, no traceparent, or a trace its caller did not sample."""
    return tracing.sampled_parent(delivery.entry.trace_parent)


@dataclass(slots=True)
class HandlerSpan:
    """The span of one handler run: its ids from the grant, current while the handler runs, and written at its end
    from the bytes the handler spans of its kind and attempt share (span_wire.SharedSpans), with no span object or
    attribute dict on the way."""

    trace_id: int
    span_id: int
    parent_span_id: int
    task_id: str
    kind: str
    attempt: int
    fence: int
    reclaimed: bool
    start_ns: int = 0


def handler_span(delivery: Delivery, result: worker_pb2.StartResult) -> HandlerSpan | None:
    """The span of the handler run the scheduler just granted (started when the handler starts), or None."""
    recorder = tracing.recorder()
    if recorder is None:
        return None
    entry = delivery.entry
    parent = tracing.parse_parent(entry.trace_parent)
    if parent is None or not parent[2] & 1:  # absent, malformed, or its trace not sampled
        return None
    return HandlerSpan(
        parent[0],
        recorder.ids.generate_span_id(),
        parent[1],
        entry.task_id,
        entry.kind,
        result.task.attempt,
        result.fence,
        delivery.reclaimed,
    )


class _HandlerRun:
    """The handler span's start (made current) and end around the handler's run."""

    __slots__ = ("recorder", "span", "stop_reason", "token")
    token: CurrentTokens

    def __init__(self, recorder: Recorder, span: HandlerSpan, stop_reason: Callable[[], str]) -> None:
        self.recorder = recorder
        self.span = span
        self.stop_reason = stop_reason

    def __enter__(self) -> None:
        span = self.span
        span.start_ns = time.time_ns()
        self.token = self.recorder.make_current(span.trace_id, span.span_id)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _: object) -> None:
        end_ns = time.time_ns()
        self.recorder.detach(self.token)
        # Written at the loop's next turn (deferred.later): the outcome goes to the reporter first.
        deferred.later(_write_handler, self.span, end_ns, self.stop_reason(), "" if exc is None else repr(exc))


def handler_run(span: HandlerSpan | None, stop_reason: Callable[[], str]) -> AbstractContextManager[None]:
    """The handler runs within: its span (if any) starts, is current, and ends with it (stop_reason(): why it
    was stopped, "" when it was not)."""
    recorder = tracing.recorder()
    return _NOTHING if span is None or recorder is None else _HandlerRun(recorder, span, stop_reason)


# By kind, attempt, reclaimed and stop reason: what the handler spans of a kind and attempt share (most are a
# first attempt, not reclaimed, not stopped). Bounded: past it, a span's shared bytes are written for it alone.
_handler_writers: dict[tuple[str, int, bool, str], SharedSpans] = {}
_HANDLER_WRITERS = 256


def _shared(kind: str, attempt: int, reclaimed: bool, stopped: str) -> dict[str, AttributeValue]:
    shared: dict[str, AttributeValue] = {"task.kind": kind, "task.attempt": attempt}
    if reclaimed:
        shared["task.reclaimed"] = True
    if stopped:
        shared["task.stopped"] = stopped
    return shared


def _write_handler(span: HandlerSpan, end_ns: int, stopped: str, error: str) -> None:
    recorder = tracing.recorder()
    if recorder is None:
        return
    write = recorder.record_encoded
    if write is None or error:  # a processor that takes no bytes, or a rare error: a TaskSpan
        attributes: dict[str, AttributeValue] = {"task.id": span.task_id, "task.fence": span.fence}
        attributes.update(_shared(span.kind, span.attempt, span.reclaimed, stopped))
        task_span = tracing.task_span(
            "task.handler", (span.trace_id, span.parent_span_id, 1), span.start_ns, attributes
        )
        if task_span is not None:
            task_span.span_id = span.span_id
            task_span.end(end_ns, error)
        return
    from services.core import span_wire

    key = (span.kind, span.attempt, span.reclaimed, stopped)
    writer = _handler_writers.get(key)
    if writer is None:
        writer = span_wire.SharedSpans("task.handler", _shared(*key))
        if len(_handler_writers) < _HANDLER_WRITERS:
            _handler_writers[key] = writer
    own = span_wire.times(span.start_ns, end_ns) + span_wire.task_fields(span.task_id, span.fence)
    write([writer.span(span.trace_id, span.span_id, span.parent_span_id, own)])
