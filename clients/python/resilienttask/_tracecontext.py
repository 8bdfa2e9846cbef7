"""W3C trace context on calls, when the caller traces with OpenTelemetry; OpenTelemetry is never required.

When the application has loaded OpenTelemetry and a span is current, each call carries its `traceparent`
(and `tracestate`), so the service's spans join the caller's trace. Otherwise nothing is sent, and
nothing is imported: the check is one dictionary lookup.
"""

from __future__ import annotations

import sys

Metadata = tuple[tuple[str, str], ...]
_HEADERS = ("traceparent", "tracestate")


def trace_metadata() -> Metadata:
    """The current trace context as call metadata, or () when the caller does not trace."""
    if "opentelemetry.trace" not in sys.modules:
        return ()
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return tuple((key, carrier[key]) for key in _HEADERS if key in carrier)
