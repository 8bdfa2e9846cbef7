"""The span current in a task of the event loop, as our own code reads it: (trace id, span id, trace flags).

Set for its handler by each traced call's server span (services.core.server_spans) and by the worker around a
handler run; read for the traceparent a submission carries (tracing.current_parent), the spans made under a call
(tracing.span) and the trace id of log lines. A ContextVar of a plain tuple rather than OpenTelemetry's context:
making a span current through that API (a SpanContext, a NonRecordingSpan and a copy of the Context, then
attached) and reading it back cost 6.5 µs warm against 1.1 µs (timeit), and a call runs it cold, a few times
slower, on the way to every handler of the gateway. Nothing in a gateway's or scheduler's call uses the
OpenTelemetry API; a worker's handler may (its own spans), so the worker makes its span current in both.

Imports nothing of the SDK: tracing.py reads it with tracing off too.
"""

from __future__ import annotations

from contextvars import ContextVar

# (trace id, span id, trace flags): the same shape as a remote parent (services.core.task_spans.RemoteParent).
SpanIds = tuple[int, int, int]

CURRENT_SPAN: ContextVar[SpanIds | None] = ContextVar("resilienttask_current_span", default=None)
