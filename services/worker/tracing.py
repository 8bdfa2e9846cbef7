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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from resilienttask.worker.v1 import worker_pb2
from services.core import tracing
from services.core.dispatch import parse_ref
from services.worker.consumer import Delivery

if TYPE_CHECKING:
    from services.core.span_wire import SharedSpans
    from services.core.task_spans import TaskSpan


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
    start request that asks about them is on its way (tracing.later): its writing does not hold up their start."""
    if tracing.recorder() is not None:
        tracing.later(write_queue_waits, deliveries, time.time_ns())


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
        own = span_wire.times(start_ns, now_ns) + span_wire.attribute("task.id", entry.task_id)
        encoded.append(writer.span(parent[0], recorder.ids.generate_span_id(), parent[1], own))
    if encoded and write is not None:
        write(encoded)


def sampled_parent(delivery: Delivery) -> str:
    """The traceparent the scheduler's spans of this entry continue (its submission's), "" when there is none:
    tracing off here, no traceparent, or a trace its caller did not sample."""
    return tracing.sampled_parent(delivery.entry.trace_parent)


def handler_span(delivery: Delivery, result: worker_pb2.StartResult) -> TaskSpan | None:
    """The span of the handler run the scheduler just granted (started when the handler starts), or None."""
    if not tracing.enabled():
        return None
    entry = delivery.entry
    span = tracing.task_span(
        "task.handler",
        tracing.parse_parent(entry.trace_parent),
        0,
        {
            "task.id": entry.task_id,
            "task.kind": entry.kind,
            "task.attempt": result.task.attempt,
            "task.fence": result.fence,
        },
    )
    if span is not None and delivery.reclaimed:
        span.attributes["task.reclaimed"] = True
    return span


@contextmanager
def handler_run(span: TaskSpan | None, stop_reason: Callable[[], str]) -> Iterator[None]:
    """The handler runs within: its span (if any) starts, is current, and ends with it (stop_reason(): why it
    was stopped, "" when it was not)."""
    if span is None:
        yield
        return
    span.start_ns = time.time_ns()
    token = span.attach()
    error = ""
    try:
        yield
    except BaseException as exc:
        error = repr(exc)
        raise
    finally:
        span.detach(token)
        if reason := stop_reason():
            span.attributes["task.stopped"] = reason
        # Written once the outcome's report is on its way (tracing.later), not before it.
        tracing.later(span.end, time.time_ns(), error)
