"""The spans of one task on the hot path (the worker's and the scheduler's), each recorded once, at its end.

Their times are mostly known after the fact (a batch's start, commit and push; an entry's publication), and the
SDK's live span (a sampler call, locks, bounded containers, a copy at its end) costs about ten times what
handing a finished span to the batch processor does. So a TaskSpan holds its ids from the start (its
traceparent goes to the next process at once) and becomes the SDK's ReadableSpan at its end, exported with the
SDK's own spans (same resource, processor and exporter). A task span follows the sampling decision of the span
that submitted the task (its traceparent's sampled flag), as the default parent-based sampler does.

Imported only when tracing is on (it loads the SDK); everything it needs is imported here once, not per span.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from opentelemetry import context as otel_context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import NonRecordingSpan, SpanContext, Status, StatusCode, TraceFlags, set_span_in_context
from opentelemetry.util.types import AttributeValue

_UNSET = Status()


@dataclass(frozen=True)
class Recorder:
    """Where finished task spans go, and what names them: the process's provider's, set up with it."""

    processor: SpanProcessor
    resource: Resource
    scope: InstrumentationScope
    ids: IdGenerator

    def remote(self, trace_id: int, span_id: int, flags: int) -> SpanContext:
        """The context of a span in another process, from its traceparent's parts."""
        return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags))

    def start(
        self, name: str, parent: SpanContext, start_ns: int, attributes: dict[str, AttributeValue] | None = None
    ) -> TaskSpan | None:
        """A span under parent from start_ns, or None when the parent's trace is not sampled."""
        if not parent.trace_flags.sampled:
            return None
        return TaskSpan(self, name, self._child_of(parent), parent, start_ns, attributes or {})

    def _child_of(self, parent: SpanContext) -> SpanContext:
        return SpanContext(parent.trace_id, self.ids.generate_span_id(), False, parent.trace_flags)


@dataclass(slots=True)
class TaskSpan:
    """A span with its ids from the start and its record made once, at its end. Attributes and events may be added
    until then (a recorded span keeps its dict and list until it is exported: give each span its own)."""

    recorder: Recorder
    name: str
    context: SpanContext
    parent: SpanContext
    start_ns: int
    attributes: dict[str, AttributeValue]
    events: list[Event] = field(default_factory=list)
    ended: bool = False

    @property
    def traceparent(self) -> str:
        context = self.context
        return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"

    def child(self, name: str, start_ns: int, attributes: dict[str, AttributeValue] | None = None) -> TaskSpan:
        return TaskSpan(
            self.recorder, name, self.recorder._child_of(self.context), self.context, start_ns, attributes or {}
        )

    def add_event(self, name: str, attributes: Mapping[str, AttributeValue] | None = None, at_ns: int = 0) -> None:
        self.events.append(Event(name, attributes, at_ns or time.time_ns()))

    def end(self, end_ns: int = 0, error: str = "") -> None:
        """Record the span (once): from its start to end_ns (now when 0), an error status when error is set."""
        if self.ended:
            return
        self.ended = True
        recorder = self.recorder
        recorder.processor.on_end(
            ReadableSpan(
                self.name,
                self.context,
                self.parent,
                recorder.resource,
                self.attributes,
                self.events,
                status=Status(StatusCode.ERROR, error) if error else _UNSET,
                start_time=self.start_ns,
                end_time=end_ns or time.time_ns(),
                instrumentation_scope=recorder.scope,
            )
        )

    @contextmanager
    def current(self) -> Iterator[None]:
        """This span as the current one while the block runs (log lines and the SDK's spans see it)."""
        token = otel_context.attach(set_span_in_context(NonRecordingSpan(self.context)))
        try:
            yield
        finally:
            otel_context.detach(token)
