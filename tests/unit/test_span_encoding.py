"""Our OTLP span encoding says what the exporter's own encoder says, for spans made by the real SDK."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as library_encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ScopeSpans, Status
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.util.types import AttributeValue

from resilienttask.v1 import task_pb2
from resilienttask.worker.v1 import worker_pb2
from services.core import span_wire, tracing
from services.core.current_span import CURRENT_SPAN
from services.core.dispatch import DispatchEntry
from services.core.span_encoding import SpanExporter, encode_request, encode_spans
from services.core.task_spans import Recorder, TaskSpan
from services.scheduler import tracing as scheduler_tracing
from services.worker import tracing as worker_tracing
from services.worker.consumer import Delivery

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


# Task ids of the lengths span_wire writes differently: a UUID (every length one byte), an empty one, and one whose
# field is too long for that (written the general way).
TASK_IDS = ("0b2f6e4e-8d0c-4a39-9c1b-2f1f4c1e9a77", "", "t" * 120)


def test_a_batchs_shared_spans_on_the_wire_are_what_their_finished_spans_encode_to(
    finished: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """span_wire.SharedSpans: what a batch's spans share written once, each span its ids and own attributes."""
    provider, _ = finished
    scope = InstrumentationScope("resilienttask")
    recorder = Recorder(SimpleSpanProcessor(InMemorySpanExporter()), provider.resource, scope, provider.id_generator)
    shared = {"worker.id": "w-1", "task.outcome": "succeeded", "task.accepted": True, "ratio": 0.5}
    committed: list[tuple[str, int, None]] = [("committed", 1_500, None)]
    error = "Unavailable('é')"
    # (name, writer, shared attributes, events, error, whether each span has its own times)
    batches = [
        (
            "task.finish",
            span_wire.SharedSpans("task.finish", shared, committed, times=(1_000, 2_000)),
            shared,
            committed,
            "",
            False,
        ),
        ("task.start", span_wire.SharedSpans("task.start", {}, (), error, (1_000, 2_000)), {}, [], error, False),
        (
            "task.queue_wait",
            span_wire.SharedSpans("task.queue_wait", {"task.kind": "sleep"}),
            {"task.kind": "sleep"},
            [],
            "",
            True,
        ),
    ]
    encoded: list[bytes] = []
    expected: list[TaskSpan] = []
    span_id = 100
    for name, writer, attributes, events, status, own_times in batches:
        for trace_id, parent_span_id in ((REMOTE.trace_id, REMOTE.span_id), (2**128 - 1, 2**64 - 1)):
            for task_id, fence in zip(TASK_IDS, (2**40, 7, 0), strict=True):
                span_id += 1
                start_ns, end_ns = (3_000 + span_id, 2**63 + span_id) if own_times else (1_000, 2_000)
                own = span_wire.times(start_ns, end_ns) if own_times else b""
                own += span_wire.attribute("task.id", task_id)
                if fence:
                    own += span_wire.attribute("task.fence", fence)
                encoded.append(writer.span(trace_id, span_id, parent_span_id, own))
                values: dict[str, AttributeValue] = {**attributes, "task.id": task_id}
                if fence:
                    values["task.fence"] = fence
                span = TaskSpan(recorder, name, trace_id, span_id, parent_span_id, 1, True, start_ns, values)
                span.events = list(events) or None
                span.error = status
                span.end_ns = end_ns
                expected.append(span)
    ours = ExportTraceServiceRequest.FromString(span_wire.request(recorder.framing, encoded))
    assert ours == encode_spans([span.readable() for span in expected])
    assert ours == _without_empty_status(library_encode_spans([span.readable() for span in expected]))
    # Each span alone is what the span-by-span encoder writes for the same TaskSpan (an element of ScopeSpans.spans).
    one_by_one = [span_wire.encoded(span) for span in expected]
    assert [ScopeSpans.FromString(one) for one in encoded] == [ScopeSpans.FromString(one) for one in one_by_one]  # type: ignore[arg-type]


def _queued(processor: BatchSpanProcessor) -> list[bytes]:
    return list(reversed(processor._batch_processor._queue))  # type: ignore[attr-defined]


def _task_recorder(
    finished: tuple[TracerProvider, InMemorySpanExporter], monkeypatch: pytest.MonkeyPatch, shared_bytes: bool
) -> Recorder:
    """The process's task-span recorder for a test: spans written as bytes into a batch processor's queue (never
    exported), or handed as TaskSpans to the in-memory exporter."""
    provider, memory = finished
    if shared_bytes:
        processor: SpanProcessor = BatchSpanProcessor(
            SpanExporter(endpoint="http://127.0.0.1:9"), schedule_delay_millis=600_000
        )
    else:
        processor = SimpleSpanProcessor(memory)
    recorder = Recorder(processor, provider.resource, InstrumentationScope("resilienttask"), provider.id_generator)
    monkeypatch.setattr(tracing, "_recorder", recorder)
    return recorder


def _recorded(recorder: Recorder, memory: InMemorySpanExporter, shared_bytes: bool) -> ExportTraceServiceRequest:
    """What the recorder was handed, as the export request it would make (bytes on one path, TaskSpans on the
    other); the processor is shut down with nothing left to send."""
    processor = recorder.processor
    try:
        if shared_bytes:
            assert isinstance(processor, BatchSpanProcessor)
            queued = _queued(processor)
            processor._batch_processor._queue.clear()  # type: ignore[attr-defined]  # nothing to send at shutdown
            assert all(type(one) is bytes for one in queued)
            return ExportTraceServiceRequest.FromString(span_wire.request(recorder.framing, queued))
        spans = list(memory.get_finished_spans())
        assert all(type(one) is TaskSpan for one in spans)
        return ExportTraceServiceRequest.FromString(span_wire.encode(spans))  # type: ignore[arg-type]
    finally:
        processor.shutdown()


@pytest.mark.parametrize("shared_bytes", [True, False], ids=["shared-bytes", "task-spans"])
def test_the_schedulers_spans_of_a_batch(
    finished: tuple[TracerProvider, InMemorySpanExporter], monkeypatch: pytest.MonkeyPatch, shared_bytes: bool
) -> None:
    """services.scheduler.tracing: one span per traced item, a child of the item's traceparent (a sampled one), with
    the batch's times, its own task id and fence; the same spans whether written from a batch's shared bytes (our
    exporter's queue) or one TaskSpan each (any other processor)."""
    recorder = _task_recorder(finished, monkeypatch, shared_bytes)
    parent = f"00-{REMOTE.trace_id:032x}-{REMOTE.span_id:016x}-01"
    unsampled = f"00-{REMOTE.trace_id:032x}-{REMOTE.span_id:016x}-00"
    finishes = [
        worker_pb2.FinishItem(task=worker_pb2.HeldTask(task_id=TASK_IDS[0], fence=9), outcome=1, trace_parent=parent),
        worker_pb2.FinishItem(task=worker_pb2.HeldTask(task_id="b", fence=3), outcome=2, trace_parent=parent),
        worker_pb2.FinishItem(task=worker_pb2.HeldTask(task_id="c", fence=4), outcome=1, trace_parent=unsampled),
        worker_pb2.FinishItem(task=worker_pb2.HeldTask(task_id="d", fence=5), outcome=1),
        worker_pb2.FinishItem(task=worker_pb2.HeldTask(task_id="e", fence=6), outcome=1, trace_parent="garbage"),
    ]
    verdicts = [
        worker_pb2.FinishResult(accepted=True),
        worker_pb2.FinishResult(accepted=False, reason="superseded"),
        *[worker_pb2.FinishResult(accepted=True)] * 3,
    ]
    starts = [
        worker_pb2.StartItem(task_id="f", trace_parent=parent),
        worker_pb2.StartItem(task_id="g", trace_parent=parent),
    ]
    results = [
        worker_pb2.StartResult(task_id="f", decision=worker_pb2.START_DECISION_RUN, fence=11),
        worker_pb2.StartResult(task_id="g", decision=worker_pb2.START_DECISION_SKIP, reason="cancelled"),
    ]
    scheduler_tracing.record_work("w-1", finishes, verdicts, starts, results, scheduler_tracing.BatchTimes(10, 20, 30))
    scheduler_tracing.record_failure("w-1", finishes[:1], starts[:1], scheduler_tracing.BatchTimes(40, 50, 50), "E")
    request = _recorded(recorder, finished[1], shared_bytes)
    got = [
        (
            s.name,
            s.parent_span_id.hex(),
            s.start_time_unix_nano,
            s.end_time_unix_nano,
            [(e.name, e.time_unix_nano) for e in s.events],
            s.status.message,
            {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in s.attributes},
        )
        for s in request.resource_spans[0].scope_spans[0].spans
    ]
    assert {s.trace_id for s in request.resource_spans[0].scope_spans[0].spans} == {REMOTE.trace_id.to_bytes(16, "big")}
    assert len({s.span_id for s in request.resource_spans[0].scope_spans[0].spans}) == len(got) == 6
    remote = f"{REMOTE.span_id:016x}"
    ran, failed = (10, 30, [("committed", 20)], ""), (40, 50, [], "E")
    finished_ok = {"task.outcome": "succeeded", "task.accepted": True, "task.id": TASK_IDS[0], "task.fence": 9}
    refused = {"task.outcome": "failed", "task.accepted": False, "task.refused": "superseded", "task.id": "b"}
    assert got == [
        ("task.finish", remote, *ran, {"worker.id": "w-1", **finished_ok}),
        ("task.finish", remote, *ran, {"worker.id": "w-1", **refused, "task.fence": 3}),
        ("task.start", remote, *ran, {"worker.id": "w-1", "task.decision": "run", "task.id": "f", "task.fence": 11}),
        (
            "task.start",
            remote,
            *ran,
            {"worker.id": "w-1", "task.decision": "skip", "task.reason": "cancelled", "task.id": "g"},
        ),
        ("task.finish", remote, *failed, {"worker.id": "w-1", "task.id": TASK_IDS[0], "task.fence": 9}),
        ("task.start", remote, *failed, {"worker.id": "w-1", "task.id": "f"}),
    ]


@pytest.mark.parametrize("shared_bytes", [True, False], ids=["shared-bytes", "task-spans"])
def test_the_workers_queue_waits_of_a_read(
    finished: tuple[TracerProvider, InMemorySpanExporter], monkeypatch: pytest.MonkeyPatch, shared_bytes: bool
) -> None:
    """services.worker.tracing.queue_waits: a span per fresh entry of a sampled submission, from the time in its
    stream id to the read, the same on both recording paths; none for a reclaimed entry or an unsampled trace."""
    recorder = _task_recorder(finished, monkeypatch, shared_bytes)
    parent = f"00-{REMOTE.trace_id:032x}-{REMOTE.span_id:016x}-01"
    unsampled = f"00-{REMOTE.trace_id:032x}-{REMOTE.span_id:016x}-00"
    deliveries = [
        Delivery("sleep:1700000000123-0", DispatchEntry(TASK_IDS[0], "d", "sleep", parent)),
        Delivery("fail:p3:1700000000456-1", DispatchEntry("b", "d", "fail", parent)),
        Delivery("sleep:1700000000789-2", DispatchEntry("c", "d", "sleep", parent)),
        Delivery("sleep:1700000000999-3", DispatchEntry("r", "d", "sleep", parent), reclaimed=True),
        Delivery("sleep:1700000000999-4", DispatchEntry("u", "d", "sleep", unsampled)),
        Delivery("sleep:1700000000999-5", DispatchEntry("n", "d", "sleep")),
    ]
    worker_tracing.queue_waits(deliveries)
    request = _recorded(recorder, finished[1], shared_bytes)
    got = request.resource_spans[0].scope_spans[0].spans
    assert {s.name for s in got} == {"task.queue_wait"} and {s.trace_id for s in got} == {REMOTE.trace_id.to_bytes(16)}
    assert {s.parent_span_id for s in got} == {REMOTE.span_id.to_bytes(8)} and len({s.span_id for s in got}) == 3
    assert [s.start_time_unix_nano // 1_000_000 for s in got] == [1700000000123, 1700000000456, 1700000000789]
    assert len({s.end_time_unix_nano for s in got}) == 1 and got[0].end_time_unix_nano > got[0].start_time_unix_nano
    attributes = [{a.key: a.value.string_value for a in s.attributes} for s in got]
    assert attributes == [
        {"task.kind": "sleep", "task.id": TASK_IDS[0]},
        {"task.kind": "fail", "task.id": "b"},
        {"task.kind": "sleep", "task.id": "c"},
    ]


@pytest.mark.parametrize("shared_bytes", [True, False], ids=["shared-bytes", "task-spans"])
def test_the_workers_handler_span(
    finished: tuple[TracerProvider, InMemorySpanExporter], monkeypatch: pytest.MonkeyPatch, shared_bytes: bool
) -> None:
    """services.worker.tracing.handler_run: the span of a handler run, current while it runs, written at its end
    (the same on both recording paths); none for an unsampled trace."""
    recorder = _task_recorder(finished, monkeypatch, shared_bytes)
    parent = f"00-{REMOTE.trace_id:032x}-{REMOTE.span_id:016x}-01"
    granted = worker_pb2.StartResult(task_id=TASK_IDS[0], fence=12, task=task_pb2.Task(attempt=2))
    unsampled = Delivery("sleep:1-0", DispatchEntry("u", "d", "sleep", parent[:-2] + "00"))
    assert worker_tracing.handler_span(unsampled, granted) is None
    delivery = Delivery("sleep:1-0", DispatchEntry(TASK_IDS[0], "d", "sleep", parent), reclaimed=True)
    span = worker_tracing.handler_span(delivery, granted)
    assert span is not None
    with worker_tracing.handler_run(span, lambda: "cancelled"):
        # Current for our code (log lines, our spans) and for the SDK's spans a handler makes.
        assert CURRENT_SPAN.get() == (REMOTE.trace_id, span.span_id, 1)
        current = trace.get_current_span().get_span_context()
        assert (current.trace_id, current.span_id, current.trace_flags.sampled) == (REMOTE.trace_id, span.span_id, True)
    assert CURRENT_SPAN.get() is None
    assert not trace.get_current_span().get_span_context().is_valid
    (got,) = _recorded(recorder, finished[1], shared_bytes).resource_spans[0].scope_spans[0].spans
    assert (got.name, got.trace_id, got.span_id, got.parent_span_id) == (
        "task.handler",
        REMOTE.trace_id.to_bytes(16),
        span.span_id.to_bytes(8),
        REMOTE.span_id.to_bytes(8),
    )
    assert got.start_time_unix_nano == span.start_ns <= got.end_time_unix_nano
    attributes = {a.key: a.value for a in got.attributes}
    assert {k: v.string_value for k, v in attributes.items() if v.HasField("string_value")} == {
        "task.id": TASK_IDS[0],
        "task.kind": "sleep",
        "task.stopped": "cancelled",
    }
    assert (attributes["task.attempt"].int_value, attributes["task.fence"].int_value) == (2, 12)
    assert attributes["task.reclaimed"].bool_value is True


@pytest.mark.parametrize("task_id", [TASK_IDS[0], "", "b", "x" * 300])
@pytest.mark.parametrize("fence", [0, 1, 127, 128, 70_000, 2**40, -5])
def test_a_task_spans_own_fields_are_its_attributes(task_id: str, fence: int) -> None:
    """span_wire.task_fields: the task.id field, then task.fence when set, as attribute() writes each (twice: the
    second time from the cached heads)."""
    expected = span_wire.attribute("task.id", task_id) + (span_wire.attribute("task.fence", fence) if fence else b"")
    assert span_wire.task_fields(task_id, fence) == expected
    assert span_wire.task_fields(task_id, fence) == expected
