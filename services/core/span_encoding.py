"""OTLP encoding of finished spans at half the cost of the exporter's own, for the spans we make.

The OTLP exporter encodes on its export thread, which holds the GIL against the process's event loop; its
encoder builds every field of every span (an empty status, empty event and link lists, a trace state) and
hashes each span's resource (a JSON dump of its attributes) to group the batch. At full sampling that
encoding was most of what tracing cost the scheduler and the workers (docs/observability-cost.md). This
encoder writes only the fields a span has and groups by the resource and scope objects themselves (one
provider, so one of each), and gives the same message up to default-valued fields, which OTLP reads as
absent (tests/unit/test_span_encoding.py compares the two). A batch holding anything it does not write (links,
a trace state, an attribute value other than str, bool, int, float or a sequence of those) is encoded by
the exporter's own encoder, unchanged.

Imported only when tracing is on (it loads the SDK and the exporter).
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as library_encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Status
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.util.types import Attributes

_KINDS = {
    SpanKind.INTERNAL: PbSpan.SPAN_KIND_INTERNAL,
    SpanKind.SERVER: PbSpan.SPAN_KIND_SERVER,
    SpanKind.CLIENT: PbSpan.SPAN_KIND_CLIENT,
    SpanKind.PRODUCER: PbSpan.SPAN_KIND_PRODUCER,
    SpanKind.CONSUMER: PbSpan.SPAN_KIND_CONSUMER,
}
_FLAGS_LOCAL_PARENT = 0x100  # SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
_FLAGS_REMOTE_PARENT = 0x300  # ... | SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK


class Unsupported(Exception):
    """A span this encoder does not write: the batch goes to the exporter's own encoder."""


def _value(value: object) -> AnyValue:
    # bool before int: a bool is an int.
    if isinstance(value, str):
        return AnyValue(string_value=value)
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, Sequence) and not isinstance(value, bytes):
        return AnyValue(array_value=ArrayValue(values=[_value(v) for v in value]))
    raise Unsupported(type(value).__name__)


def _attributes(attributes: Attributes) -> list[KeyValue] | None:
    if not attributes:
        return None
    return [KeyValue(key=key, value=_value(value)) for key, value in attributes.items()]


def _span(span: ReadableSpan) -> PbSpan:
    context, parent = span.context, span.parent
    if context is None or span.links or context.trace_state or span.dropped_attributes or span.dropped_events:
        raise Unsupported("links, trace state or dropped data")
    status = span.status
    return PbSpan(
        trace_id=context.trace_id.to_bytes(16, "big"),
        span_id=context.span_id.to_bytes(8, "big"),
        parent_span_id=parent.span_id.to_bytes(8, "big") if parent is not None else b"",
        name=span.name,
        kind=_KINDS[span.kind],
        start_time_unix_nano=span.start_time or 0,
        end_time_unix_nano=span.end_time or 0,
        attributes=_attributes(span.attributes),
        events=[
            PbSpan.Event(name=e.name, time_unix_nano=e.timestamp, attributes=_attributes(e.attributes))
            for e in span.events
        ]
        if span.events
        else None,
        status=Status(code=status.status_code.value, message=status.description or "")
        if status.status_code is not StatusCode.UNSET
        else None,
        flags=_FLAGS_REMOTE_PARENT if parent is not None and parent.is_remote else _FLAGS_LOCAL_PARENT,
    )


def _scope(span: ReadableSpan) -> InstrumentationScope:
    scope = span.instrumentation_scope
    if scope is None:
        return InstrumentationScope()
    return InstrumentationScope(name=scope.name, version=scope.version or "", attributes=_attributes(scope.attributes))


def encode_spans(spans: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
    """The export request for a batch of finished spans."""
    try:
        return _encode(spans)
    except Unsupported:
        return library_encode_spans(spans)


def _encode(spans: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
    # By resource, then scope: the very objects (a process has one provider, so one resource).
    groups: dict[int, tuple[ReadableSpan, dict[int, tuple[ReadableSpan, list[PbSpan]]]]] = {}
    for span in spans:
        _, scopes = groups.setdefault(id(span.resource), (span, {}))
        scopes.setdefault(id(span.instrumentation_scope), (span, []))[1].append(_span(span))
    return ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(attributes=_attributes(first.resource.attributes)),
                schema_url=first.resource.schema_url,
                scope_spans=[
                    ScopeSpans(
                        scope=_scope(one),
                        schema_url=(one.instrumentation_scope.schema_url or "") if one.instrumentation_scope else "",
                        spans=encoded,
                    )
                    for one, encoded in scopes.values()
                ],
            )
            for first, scopes in groups.values()
        ]
    )


class SpanExporter(OTLPSpanExporter):
    """The OTLP gRPC span exporter (endpoint, headers, retries, timeouts from the OTEL_* variables) with the
    encoder above."""

    def _translate_data(self, data: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
        return encode_spans(data)
