"""The gRPC server span of each call (services.core.server_spans), on a real grpc.aio server in this process."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, Decision, ParentBased, Sampler, SamplingResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanKind, TraceState
from opentelemetry.util.types import Attributes

from services.core import tracing
from services.core.current_span import CURRENT_SPAN
from services.core.server_spans import ServerSpans
from services.core.task_spans import Recorder, TaskSpan

SERVICE = "test.v1.Probe"


def _parent(text: str | None) -> tracing.RemoteParent | None:
    """tracing.parse_parent without a configured provider (it returns None while tracing is off)."""
    if not text or tracing._TRACEPARENT.fullmatch(text) is None:
        return None
    return int(text[3:35], 16), int(text[36:52], 16), int(text[53:], 16)


def _current() -> tuple[int, int, bool]:
    """(trace id, span id, sampled) of the current span; zeros when none is."""
    trace_id, span_id, flags = CURRENT_SPAN.get() or (0, 0, 0)
    return trace_id, span_id, bool(flags & 1)


@dataclass
class Probe:
    channel: grpc.aio.Channel
    recorded: InMemorySpanExporter
    # (trace id, span id, sampled) of the span current in each handler, in call order.
    seen: list[tuple[int, int, bool]]

    async def call(self, method: str, traceparent: str | None = None) -> grpc.StatusCode:
        metadata = (("traceparent", traceparent),) if traceparent else None
        path = f"/{SERVICE}/{method}"
        try:
            if method == "Stream":
                async for _ in self.channel.unary_stream(path)(b"", metadata=metadata):
                    pass
            else:
                await self.channel.unary_unary(path)(b"", metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    def spans(self) -> list[TaskSpan]:
        return list(self.recorded.get_finished_spans())  # type: ignore[arg-type]


@pytest.fixture
def provider() -> Iterator[TracerProvider]:
    provider = TracerProvider(resource=Resource.create({"service.name": "resilienttask-test"}))
    yield provider
    provider.shutdown()


async def _probe(provider: TracerProvider, sampler: Any) -> AsyncIterator[Probe]:
    recorded = InMemorySpanExporter()
    recorder = Recorder(
        SimpleSpanProcessor(recorded), provider.resource, InstrumentationScope("resilienttask"), provider.id_generator
    )
    seen: list[tuple[int, int, bool]] = []

    async def ok(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        seen.append(_current())
        return b""

    async def not_found(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        seen.append(_current())
        await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")

    async def internal(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await context.abort(grpc.StatusCode.INTERNAL, "broken")

    async def raises(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        raise ValueError("unexpected")

    async def stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        for _ in range(3):
            seen.append(_current())
            yield b"x"

    handlers = {
        "Ok": grpc.unary_unary_rpc_method_handler(ok),
        "NotFound": grpc.unary_unary_rpc_method_handler(not_found),
        "Internal": grpc.unary_unary_rpc_method_handler(internal),
        "Raises": grpc.unary_unary_rpc_method_handler(raises),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
        "Untraced": grpc.unary_unary_rpc_method_handler(ok),
    }
    untraced = f"/{SERVICE}/Untraced"
    interceptor = ServerSpans(recorder, sampler, lambda details: details.method != untraced, _parent)
    server = grpc.aio.server(interceptors=[interceptor])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield Probe(channel, recorded, seen)
    finally:
        await server.stop(0)


@pytest.fixture
async def probe(provider: TracerProvider) -> AsyncIterator[Probe]:
    async for one in _probe(provider, ParentBased(ALWAYS_ON)):
        yield one


def traceparent(sampled: bool = True) -> tuple[str, int, int]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}", int(trace_id, 16), int(span_id, 16)


async def test_a_call_continues_the_callers_trace_with_a_server_span_current_in_its_handler(probe: Probe) -> None:
    parent, trace_id, parent_id = traceparent()
    assert await probe.call("Ok", parent) == grpc.StatusCode.OK
    (span,) = probe.spans()
    assert (span.name, span.trace_id, span.parent_span_id, span.parent_remote) == (
        f"/{SERVICE}/Ok",
        trace_id,
        parent_id,
        True,
    )
    assert span.server and span.ended and not span.error
    assert span.attributes == {
        "rpc.system": "grpc",
        "rpc.service": SERVICE,
        "rpc.method": "Ok",
        "rpc.grpc.status_code": 0,
    }
    assert probe.seen == [(trace_id, span.span_id, True)]
    # Nothing is left current once the call is over.
    assert CURRENT_SPAN.get() is None


async def test_a_call_without_a_traceparent_starts_a_trace_and_a_malformed_one_is_ignored(probe: Probe) -> None:
    await probe.call("Ok")
    await probe.call("Ok", "00-not-a-traceparent")
    spans = probe.spans()
    assert len(spans) == 2 and len({s.trace_id for s in spans}) == 2
    assert all(s.parent_span_id == 0 and not s.parent_remote for s in spans)
    assert [(t, s) for t, s, _ in probe.seen] == [(s.trace_id, s.span_id) for s in spans]


async def test_an_unsampled_call_records_nothing_but_its_handler_sees_the_trace_unsampled(probe: Probe) -> None:
    parent, trace_id, parent_id = traceparent(sampled=False)
    await probe.call("Ok", parent)
    assert probe.spans() == []
    ((seen_trace, seen_span, sampled),) = probe.seen
    assert (seen_trace, sampled) == (trace_id, False) and seen_span not in (0, parent_id)


async def test_the_sampler_of_the_process_decides_a_root_call(provider: TracerProvider) -> None:
    async for probe in _probe(provider, ParentBased(ALWAYS_OFF)):
        await probe.call("Ok")
        assert probe.spans() == [] and probe.seen[0][2] is False
        parent, trace_id, _ = traceparent()  # a sampled caller is followed all the same
        await probe.call("Ok", parent)
        assert [s.trace_id for s in probe.spans()] == [trace_id]


async def test_the_status_code_is_recorded_and_a_servers_failure_is_an_error(probe: Probe) -> None:
    assert await probe.call("NotFound") == grpc.StatusCode.NOT_FOUND
    assert await probe.call("Internal") == grpc.StatusCode.INTERNAL
    assert await probe.call("Raises") == grpc.StatusCode.UNKNOWN
    not_found, internal, raises = probe.spans()
    assert (not_found.attributes["rpc.grpc.status_code"], not_found.error) == (5, "")
    assert (internal.attributes["rpc.grpc.status_code"], internal.error) == (13, "INTERNAL: broken")
    assert raises.attributes["rpc.grpc.status_code"] == 2 and "unexpected" in raises.error


async def test_a_streamed_response_is_one_span_current_at_each_step(probe: Probe) -> None:
    parent, trace_id, parent_id = traceparent()
    assert await probe.call("Stream", parent) == grpc.StatusCode.OK
    (span,) = probe.spans()
    assert (span.trace_id, span.parent_span_id, span.attributes["rpc.grpc.status_code"]) == (trace_id, parent_id, 0)
    assert probe.seen == [(trace_id, span.span_id, True)] * 3


async def test_an_untraced_method_gets_no_span(probe: Probe) -> None:
    parent, _, _ = traceparent()
    await probe.call("Untraced", parent)
    assert probe.spans() == [] and probe.seen == [(0, 0, False)]


class _SampledOddTraces(Sampler):
    """A sampler of no known kind (no sampling rule): the server span must ask it as the SDK would."""

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        parent = trace.get_current_span(parent_context).get_span_context()
        sampled = parent.trace_flags.sampled if parent.is_valid else trace_id % 2 == 1
        return SamplingResult(Decision.RECORD_AND_SAMPLE if sampled else Decision.DROP)

    def get_description(self) -> str:
        return "SampledOddTraces"


async def test_a_sampler_of_no_known_kind_is_asked_for_each_call(provider: TracerProvider) -> None:
    async for probe in _probe(provider, _SampledOddTraces()):
        for _ in range(40):
            await probe.call("Ok")
        seen = {trace_id: sampled for trace_id, _, sampled in probe.seen}
        assert len(seen) == 40 and any(seen.values()) and not all(seen.values())
        assert all(sampled == (trace_id % 2 == 1) for trace_id, sampled in seen.items())
        assert sorted(s.trace_id for s in probe.spans()) == sorted(t for t, sampled in seen.items() if sampled)
        parent, trace_id, _ = traceparent(sampled=False)  # and its parent-based choice is its own
        await probe.call("Ok", parent)
        assert probe.seen[-1][0] == trace_id and probe.seen[-1][2] is False
