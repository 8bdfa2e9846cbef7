"""Our OTLP span encoding says what the exporter's own encoder says, for spans made by the real SDK."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as library_encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Status
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind, StatusCode

from services.core import span_wire
from services.core.span_encoding import encode_request, encode_spans
from services.core.task_spans import Recorder, TaskSpan

REMOTE = trace.SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, True, trace.TraceFlags(1))


@pytest.fixture
def finished() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    provider = TracerProvider(
        resource=Resource.create({"service.name": "resilienttask-test", "service.instance.id": "w-1", "n": 3})
    )
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def _without_empty_status(request: ExportTraceServiceRequest) -> ExportTraceServiceRequest:
    """The library writes an empty status on every span; OTLP reads an absent one the same (UNSET)."""
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                if span.status == Status():
                    span.ClearField("status")
    return request


def _spans(provider: TracerProvider) -> None:
    tracer = provider.get_tracer("resilienttask")
    with tracer.start_as_current_span(
        "/pkg.Service/Method",
        kind=SpanKind.SERVER,
        attributes={"rpc.method": "Method", "n": 7, "ratio": 0.5, "ok": True, "names": ["a", "b"], "ns": (1, 2)},
    ) as root:
        root.add_event("started", {"decision": "run", "reason": ""}, timestamp=123)
        root.add_event("bare")
        with tracer.start_as_current_span("child") as child:
            child.set_status(trace.Status(StatusCode.ERROR, "it broke"))
        with tracer.start_as_current_span("ok child") as child:
            child.set_status(trace.Status(StatusCode.OK))
    remote = trace.set_span_in_context(trace.NonRecordingSpan(REMOTE))
    tracer.start_span("task.attempt", remote, attributes={"task.id": "t-1"}, start_time=5).end(end_time=9)
    other = provider.get_tracer("another.scope", "1.2")
    other.start_span("elsewhere", remote).end()


def test_the_encoding_is_the_libraries_for_the_spans_we_make(
    finished: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = finished
    _spans(provider)
    spans = exporter.get_finished_spans()
    assert len(spans) == 5
    ours = encode_spans(spans)
    assert ours == _without_empty_status(library_encode_spans(spans))
    # Ours writes no empty status; the library's two groups of scope are ours too.
    assert [len(s.scope_spans) for s in ours.resource_spans] == [2]
    assert sum(not span.HasField("status") for s in ours.resource_spans[0].scope_spans for span in s.spans) == 3


def test_a_batch_with_what_it_does_not_write_is_the_libraries_exactly(
    finished: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = finished
    _spans(provider)
    tracer = provider.get_tracer("resilienttask")
    tracer.start_span("linked", links=[trace.Link(REMOTE, {"why": "batch"})]).end()
    spans: tuple[ReadableSpan, ...] = exporter.get_finished_spans()
    assert encode_spans(spans) == library_encode_spans(spans)


def _task_spans(provider: TracerProvider) -> list[TaskSpan]:
    """Task spans of every shape the worker and the scheduler make, ended, with what span_wire must write."""
    scope = InstrumentationScope("resilienttask")
    recorder = Recorder(SimpleSpanProcessor(InMemorySpanExporter()), provider.resource, scope, provider.id_generator)
    parent = (REMOTE.trace_id, REMOTE.span_id, 1)
    attempt = recorder.start("task.attempt", parent, 1_000, {"task.id": "t" * 40, "task.kind": "sleep"})
    assert attempt is not None
    attempt.attributes.update({"task.attempt": 3, "task.fence": 2**40, "task.reclaimed": True, "neg": -5})
    attempt.add_event("start decided", {"decision": "skip", "reason": ""}, at_ns=1_500)
    handler = attempt.child("task.handler", 2_000)
    handler.end(3_000, error="ValueError('é')")
    finish = recorder.start("task.finish", parent, 4_000, {"task.accepted": False, "ratio": 0.25, "empty": ""})
    assert finish is not None
    finish.add_event("committed", at_ns=4_500)
    finish.end(5_000)
    attempt.end(6_000)
    assert recorder.start("task.start", (REMOTE.trace_id, REMOTE.span_id, 0), 1) is None  # not sampled
    # gRPC server spans (services.core.server_spans): one continuing a caller's span, one a trace's root.
    rpc = {"rpc.system": "grpc", "rpc.service": "pkg.Service", "rpc.method": "Method", "rpc.grpc.status_code": 0}
    served = TaskSpan(recorder, "/pkg.Service/Method", REMOTE.trace_id, 7, REMOTE.span_id, 1, True, 7_000, rpc)
    served.server = True
    served.end(8_000)
    root = TaskSpan(recorder, "/pkg.Service/Method", 2**100 + 1, 9, 0, 1, False, 9_000, dict(rpc), server=True)
    root.end(10_000, error="INTERNAL: broken")
    return [handler, finish, attempt, served, root]


def test_task_spans_on_the_wire_are_what_their_finished_spans_encode_to(
    finished: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = finished
    spans = _task_spans(provider)
    ours = ExportTraceServiceRequest.FromString(span_wire.encode(spans))
    assert ours == encode_spans([span.readable() for span in spans])
    assert ours == _without_empty_status(library_encode_spans([span.readable() for span in spans]))
    assert [s.name for s in ours.resource_spans[0].scope_spans[0].spans] == [
        "task.handler",
        "task.finish",
        "task.attempt",
        "/pkg.Service/Method",
        "/pkg.Service/Method",
    ]
    served, root = ours.resource_spans[0].scope_spans[0].spans[3:]
    assert served.kind == root.kind == served.SPAN_KIND_SERVER
    assert served.parent_span_id == REMOTE.span_id.to_bytes(8, "big") and root.parent_span_id == b""
    # Encoded one by one at their end (what the recorder queues), then framed by the exporter: the same request.
    framing = spans[0].recorder.framing
    at_end = [span_wire.encoded(span) for span in spans]
    assert all(type(one) is bytes for one in at_end)
    assert ExportTraceServiceRequest.FromString(encode_request(at_end, framing)) == ours
    # With the SDK's own spans in the same batch: both in one request.
    _spans(provider)
    sdk_spans = list(exporter.get_finished_spans())
    mixed = ExportTraceServiceRequest.FromString(encode_request([*sdk_spans, *spans]))
    assert mixed == ExportTraceServiceRequest(
        resource_spans=[*encode_spans(sdk_spans).resource_spans, *ours.resource_spans]
    )


def test_a_task_span_with_a_value_the_wire_does_not_write_goes_through_the_finished_span(
    finished: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, _ = finished
    spans = _task_spans(provider)
    spans[0].attributes["names"] = ("a", "b")
    with pytest.raises(span_wire.Unsupported):
        span_wire.encode(spans)
    assert ExportTraceServiceRequest.FromString(encode_request(spans)) == encode_spans(
        [span.readable() for span in spans]
    )
    # Such a span is queued as it is, among the others queued as bytes.
    at_end = [span_wire.encoded(span) for span in spans]
    assert at_end[0] is spans[0] and all(type(one) is bytes for one in at_end[1:])
    request = ExportTraceServiceRequest.FromString(encode_request(at_end, spans[0].recorder.framing))
    assert [s.name for r in request.resource_spans for s in r.scope_spans[0].spans] == [
        "task.handler",
        "task.finish",
        "task.attempt",
        "/pkg.Service/Method",
        "/pkg.Service/Method",
    ]
