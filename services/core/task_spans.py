"""The spans of one task on the hot path (the worker's and the scheduler's), each recorded once, at its end.

Their times are mostly known after the fact (a batch's start, commit and push; an entry's publication), and the
SDK's live span (a sampler call, locks, bounded containers, a copy at its end) costs about ten times what
handing a finished record to the batch processor does. So a TaskSpan holds its ids as plain integers from the
start (its traceparent goes to the next process at once), and at its end goes, as its OTLP bytes
(services.core.span_wire), into the queue of the process's batch span processor, exported with the SDK's own
spans (same resource, processor and exporter): no SDK span context, ReadableSpan or Event is built for it. A
task span follows the sampling decision of the span that submitted the task (its traceparent's sampled flag), as
the default parent-based sampler does.

Imported only when tracing is on (it loads the SDK); everything it needs is imported here once, not per span.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from contextvars import Token
from dataclasses import dataclass
from functools import cached_property

from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    set_span_in_context,
)
from opentelemetry.util.types import AttributeValue

from services.core.current_span import CURRENT_SPAN, SpanIds

_UNSET = Status()
_SAMPLED = 0x01
_FLAGS = TraceFlags(_SAMPLED)

# A span in another process, from its traceparent: (trace id, span id, trace flags). A plain tuple: one is made
# per traced item a process reads, and nothing more is needed of it.
RemoteParent = SpanIds
# The tokens that undo Recorder.make_current: our current span's and OpenTelemetry's context's.
CurrentTokens = tuple[Token[SpanIds | None], Token[Context]]
# An event of a task span: (name, epoch nanoseconds, attributes or None).
TaskEvent = tuple[str, int, Mapping[str, AttributeValue] | None]


@dataclass(frozen=True)
class Recorder:
    """Where finished task spans go, and what names them: the process's provider's, set up with it."""

    processor: SpanProcessor
    resource: Resource
    scope: InstrumentationScope
    ids: IdGenerator

    @cached_property
    def record(self) -> Callable[[TaskSpan], None]:
        """What an ended span is handed to. The SDK's batch processor's on_end only checks the sampled flag (ours
        are sampled, or never made) before its queue's emit, which is called directly when it is there. When the
        processor's exporter is ours (services.core.span_encoding.SpanExporter, which has a task_framing), each span
        goes into the queue as its OTLP bytes, written here at its end: bytes hold no reference the garbage
        collector tracks (a queued span and its dicts would be scanned by every collection until exported), the
        span is freed at once, and the export thread, which holds the GIL against the event loop, only joins them.
        """
        return self._sinks[0]

    @cached_property
    def record_encoded(self) -> Callable[[list[bytes]], None] | None:
        """What spans already written as their OTLP bytes (span_wire.SharedSpans) are handed to, or None when the
        processor's exporter is not ours (such spans are then made as TaskSpans and recorded one by one)."""
        return self._sinks[1]

    @cached_property
    def _sinks(self) -> tuple[Callable[[TaskSpan], None], Callable[[list[bytes]], None] | None]:
        batch = getattr(self.processor, "_batch_processor", None)
        emit = getattr(batch, "emit", None)
        if not callable(emit):
            return self.processor.on_end, None  # type: ignore[return-value]
        exporter = getattr(self.processor, "span_exporter", None)
        if exporter is None or not hasattr(exporter, "task_framing"):
            return emit, None
        from services.core.span_wire import encoded

        exporter.task_framing = self.framing
        queue, batch_size, awaken = (
            getattr(batch, n, None) for n in ("_queue", "_max_export_batch_size", "_worker_awaken")
        )
        if not (isinstance(queue, deque) and isinstance(batch_size, int) and isinstance(awaken, threading.Event)):

            def emitted(span: TaskSpan) -> None:
                emit(encoded(span))

            def emitted_all(spans: list[bytes]) -> None:
                for span in spans:
                    emit(span)

            return emitted, emitted_all
        # emit() asks the kernel for the process id on every call (a fork check: our processes never fork, their
        # handlers' children are exec'd), about half a microsecond a span on this machine's VMs. What it does
        # otherwise, done directly: queue the span, and wake the export thread at a full batch. A full queue (the
        # export falling behind) or a shut-down processor goes through emit(), which drops the span and says so.

        full = queue.maxlen if queue.maxlen is not None else sys.maxsize

        def record(span: TaskSpan) -> None:
            data = encoded(span)
            if len(queue) >= full or batch._shutdown:  # type: ignore[union-attr]
                emit(data)
                return
            queue.appendleft(data)
            if len(queue) >= batch_size and not awaken.is_set():
                awaken.set()

        def record_all(spans: list[bytes]) -> None:
            if len(queue) + len(spans) > full or batch._shutdown:  # type: ignore[union-attr]
                for span in spans:
                    emit(span)
                return
            queue.extendleft(spans)
            if len(queue) >= batch_size and not awaken.is_set():
                awaken.set()

        return record, record_all

    @cached_property
    def framing(self) -> tuple[bytes, bytes]:
        """The OTLP bytes around this recorder's spans in an export request (services.core.span_wire)."""
        from services.core.span_wire import framing

        return framing(self.resource, self.scope)

    @staticmethod
    def make_current(trace_id: int, span_id: int) -> CurrentTokens:
        """Make a sampled span of this process, known by its ids, the current one until detach(tokens): ours
        (services.core.current_span: log lines, our spans) and OpenTelemetry's (spans a handler makes with the SDK)."""
        theirs = set_span_in_context(NonRecordingSpan(SpanContext(trace_id, span_id, False, _FLAGS)))
        return CURRENT_SPAN.set((trace_id, span_id, _SAMPLED)), otel_context.attach(theirs)

    @staticmethod
    def detach(tokens: CurrentTokens) -> None:
        ours, theirs = tokens
        otel_context.detach(theirs)
        CURRENT_SPAN.reset(ours)

    def start(
        self,
        name: str,
        parent: RemoteParent,
        start_ns: int,
        attributes: dict[str, AttributeValue] | None = None,
        remote: bool = True,
    ) -> TaskSpan | None:
        """A span under parent from start_ns (remote: another process's span, else this one's), or None when the
        parent's trace is not sampled."""
        trace_id, span_id, flags = parent
        if not flags & _SAMPLED:
            return None
        return TaskSpan(
            self, name, trace_id, self.ids.generate_span_id(), span_id, flags, remote, start_ns, attributes or {}
        )


@dataclass(slots=True)
class TaskSpan:
    """A span with its ids from the start and its record made once, at its end. Attributes and events may be added
    until then (an ended span is read by the export thread: give each span its own dict, and change nothing after
    its end)."""

    recorder: Recorder
    name: str
    trace_id: int
    span_id: int
    parent_span_id: int
    flags: int
    # Whether the parent is another process's span (a traceparent read) rather than one of this process.
    parent_remote: bool
    start_ns: int
    attributes: dict[str, AttributeValue]
    # None until an event is added (most spans have none: one container fewer for each).
    events: list[TaskEvent] | None = None
    end_ns: int = 0
    # The error status's description; "" when the span's status is unset.
    error: str = ""
    # A gRPC server span (services.core.server_spans) rather than an internal one. A span whose parent_span_id is
    # 0 is a trace's root (only a server span may be one).
    server: bool = False
    _traceparent: str = ""

    @property
    def traceparent(self) -> str:
        if not self._traceparent:
            self._traceparent = f"00-{self.trace_id:032x}-{self.span_id:016x}-{self.flags:02x}"
        return self._traceparent

    @property
    def context(self) -> SpanContext:
        """The SDK's span context of this span (for making it current, and for a processor that reads it)."""
        return SpanContext(self.trace_id, self.span_id, False, TraceFlags(self.flags))

    @property
    def ended(self) -> bool:
        return self.end_ns != 0

    def child(self, name: str, start_ns: int, attributes: dict[str, AttributeValue] | None = None) -> TaskSpan:
        recorder = self.recorder
        span_id = recorder.ids.generate_span_id()
        return TaskSpan(
            recorder, name, self.trace_id, span_id, self.span_id, self.flags, False, start_ns, attributes or {}
        )

    def add_event(self, name: str, attributes: Mapping[str, AttributeValue] | None = None, at_ns: int = 0) -> None:
        event = (name, at_ns or time.time_ns(), attributes)
        if self.events is None:
            self.events = [event]
        else:
            self.events.append(event)

    def end(self, end_ns: int = 0, error: str = "") -> None:
        """Record the span (once): from its start to end_ns (now when 0), an error status when error is set."""
        if self.end_ns:
            return
        self.error = error
        self.end_ns = end_ns or time.time_ns()
        self.recorder.record(self)

    def readable(self) -> ReadableSpan:
        """The same span as the SDK's finished span (for an encoder other than services.core.span_wire)."""
        recorder = self.recorder
        parent = None
        if self.parent_span_id:
            parent = SpanContext(self.trace_id, self.parent_span_id, self.parent_remote, TraceFlags(self.flags))
        return ReadableSpan(
            self.name,
            self.context,
            parent,
            recorder.resource,
            self.attributes,
            [Event(name, attributes, at_ns) for name, at_ns, attributes in self.events or ()],
            status=Status(StatusCode.ERROR, self.error) if self.error else _UNSET,
            start_time=self.start_ns,
            end_time=self.end_ns or None,
            instrumentation_scope=recorder.scope,
            kind=SpanKind.SERVER if self.server else SpanKind.INTERNAL,
        )
