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

import grpc
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as library_encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.util.types import Attributes

from services.core import span_wire
from services.core.task_spans import TaskSpan

_KINDS = {
    SpanKind.INTERNAL: PbSpan.SPAN_KIND_INTERNAL,
    SpanKind.SERVER: PbSpan.SPAN_KIND_SERVER,
    SpanKind.CLIENT: PbSpan.SPAN_KIND_CLIENT,
    SpanKind.PRODUCER: PbSpan.SPAN_KIND_PRODUCER,
    SpanKind.CONSUMER: PbSpan.SPAN_KIND_CONSUMER,
}
_FLAGS_LOCAL_PARENT = 0x100  # SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
_FLAGS_REMOTE_PARENT = 0x300  # ... | SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


class Unsupported(Exception):
    """A span this encoder does not write: the batch goes to the exporter's own encoder."""


def _set_value(target: AnyValue, value: object) -> None:
    # bool before int: a bool is an int.
    if isinstance(value, str):
        target.string_value = value
    elif isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int):
        target.int_value = value
    elif isinstance(value, float):
        target.double_value = value
    elif isinstance(value, Sequence) and not isinstance(value, bytes):
        values = target.array_value.values
        for item in value:
            _set_value(values.add(), item)
    else:
        raise Unsupported(type(value).__name__)


def add_attributes(target: RepeatedCompositeFieldContainer[KeyValue], attributes: Attributes) -> None:
    if attributes:
        for key, value in attributes.items():
            pair = target.add()
            pair.key = key
            _set_value(pair.value, value)


def _add_span(target: PbSpan, span: ReadableSpan) -> None:
    """Fill target (a new element of its batch: written in place, never copied) with span."""
    context, parent = span.context, span.parent
    if context is None or span.links or context.trace_state or span.dropped_attributes or span.dropped_events:
        raise Unsupported("links, trace state or dropped data")
    target.trace_id = context.trace_id.to_bytes(16, "big")
    target.span_id = context.span_id.to_bytes(8, "big")
    if parent is not None:
        target.parent_span_id = parent.span_id.to_bytes(8, "big")
    target.name = span.name
    target.kind = _KINDS[span.kind]  # type: ignore[assignment]
    target.start_time_unix_nano = span.start_time or 0
    target.end_time_unix_nano = span.end_time or 0
    add_attributes(target.attributes, span.attributes)
    for event in span.events:
        encoded = target.events.add()
        encoded.name = event.name
        encoded.time_unix_nano = event.timestamp
        add_attributes(encoded.attributes, event.attributes)
    status = span.status
    if status.status_code is not StatusCode.UNSET:
        target.status.code = status.status_code.value
        target.status.message = status.description or ""
    target.flags = _FLAGS_REMOTE_PARENT if parent is not None and parent.is_remote else _FLAGS_LOCAL_PARENT


def encode_spans(spans: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
    """The export request for a batch of finished spans."""
    try:
        return _encode(spans)
    except Unsupported:
        return library_encode_spans(spans)


def _encode(spans: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    # By resource, then scope: the very objects (a process has one provider, so one resource).
    resources: dict[int, tuple[ResourceSpans, dict[int, ScopeSpans]]] = {}
    for span in spans:
        found = resources.get(id(span.resource))
        if found is None:
            encoded_resource = request.resource_spans.add()
            add_attributes(encoded_resource.resource.attributes, span.resource.attributes)
            encoded_resource.schema_url = span.resource.schema_url
            found = resources[id(span.resource)] = (encoded_resource, {})
        encoded_resource, scopes = found
        scope = span.instrumentation_scope
        encoded_scope = scopes.get(id(scope))
        if encoded_scope is None:
            encoded_scope = scopes[id(scope)] = encoded_resource.scope_spans.add()
            encoded_scope.scope.SetInParent()
            if scope is not None:
                encoded_scope.scope.name = scope.name
                encoded_scope.scope.version = scope.version or ""
                add_attributes(encoded_scope.scope.attributes, scope.attributes)
                encoded_scope.schema_url = scope.schema_url or ""
        _add_span(encoded_scope.spans.add(), span)
    return request


def encode_request(
    spans: Sequence[ReadableSpan | TaskSpan | bytes], task_framing: tuple[bytes, bytes] | None = None
) -> bytes:
    """The export request's bytes for a batch: the SDK's finished spans as above, task spans by span_wire, task
    spans already encoded at their end (bytes) in task_framing, the recorder's. The parts are concatenated: a
    message's repeated field may come in several pieces."""
    parts: list[bytes] = []
    others = [span for span in spans if type(span) is not TaskSpan and type(span) is not bytes]
    if others or not spans:
        parts.append(encode_spans(others).SerializeToString())  # type: ignore[arg-type]
    task_spans: list[TaskSpan] = [span for span in spans if type(span) is TaskSpan]  # type: ignore[misc]
    if task_spans:
        try:
            parts.append(span_wire.encode(task_spans))
        except span_wire.Unsupported:
            parts.append(encode_spans([span.readable() for span in task_spans]).SerializeToString())
    encoded: list[bytes] = [span for span in spans if type(span) is bytes]  # type: ignore[misc]
    if encoded:
        assert task_framing is not None, "task spans are encoded at their end only for an exporter that frames them"
        parts.append(span_wire.request(task_framing, encoded))
    return b"".join(parts)


def _as_bytes(request: bytes | ExportTraceServiceRequest) -> bytes:
    return request if isinstance(request, bytes) else request.SerializeToString()


class _EncodedTraceService:
    """The OTLP trace service's client for a request already encoded (bytes are sent as they are)."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.Export = channel.unary_unary(
            EXPORT_METHOD, request_serializer=_as_bytes, response_deserializer=ExportTraceServiceResponse.FromString
        )


class SpanExporter(OTLPSpanExporter):
    """The OTLP gRPC span exporter (endpoint, headers, retries, timeouts from the OTEL_* variables) with the
    encoders above: its request is bytes, sent by a client of the same method that does not encode again."""

    # The resource and scope around task spans encoded at their end (services.core.task_spans.Recorder.record
    # sets it when it hands this exporter such spans).
    task_framing: tuple[bytes, bytes] | None = None

    def _initialize_channel_and_stub(self) -> None:
        super()._initialize_channel_and_stub()
        assert self._channel is not None
        self._client = _EncodedTraceService(self._channel)  # type: ignore[assignment]

    def _translate_data(self, data: Sequence[ReadableSpan]) -> bytes:  # type: ignore[override]
        return encode_request(data, self.task_framing)
