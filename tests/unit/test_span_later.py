"""Spans kept off the path a task's start waits on: written after what the step woke (deferred.later), and the
gateway's task.publish recorded at its end as a task span under the call's span (tracing.span)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextvars import Token

import pytest
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from services.core import deferred, tracing
from services.core.current_span import CURRENT_SPAN, SpanIds
from services.core.dispatch import DispatchEntry
from services.core.task_spans import Recorder, TaskSpan
from services.worker import tracing as worker_tracing
from services.worker.consumer import Delivery

CALL = trace.SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, False, trace.TraceFlags(1))


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """The process's task-span recorder, handing each ended span to an in-memory exporter."""
    provider = TracerProvider(resource=Resource.create({"service.name": "resilienttask-test"}))
    memory = InMemorySpanExporter()
    processor = SimpleSpanProcessor(memory)
    recorder = Recorder(processor, provider.resource, InstrumentationScope("resilienttask"), provider.id_generator)
    monkeypatch.setattr(tracing, "_recorder", recorder)
    yield memory
    processor.shutdown()
    provider.shutdown()


def _under(context: trace.SpanContext) -> Token[SpanIds | None]:
    """The call's span made current, as the server span makes it (services.core.current_span)."""
    return CURRENT_SPAN.set((context.trace_id, context.span_id, int(context.trace_flags)))


async def test_a_span_written_later_comes_after_what_the_step_woke() -> None:
    happened: list[str] = []
    woken = asyncio.Event()

    async def replier() -> None:
        await woken.wait()
        happened.append("reply written")

    reply = asyncio.create_task(replier())
    await asyncio.sleep(0)  # the replier waits
    woken.set()
    deferred.later(happened.append, "span written")
    await reply
    for _ in range(3):
        await asyncio.sleep(0)
    assert happened == ["reply written", "span written"]


def test_without_a_running_loop_a_span_is_written_at_once() -> None:
    happened: list[str] = []
    deferred.later(happened.append, "span written")
    assert happened == ["span written"]


async def test_the_queue_waits_of_a_read_are_written_once_the_loop_turns(recorded: InMemorySpanExporter) -> None:
    parent = f"00-{CALL.trace_id:032x}-{CALL.span_id:016x}-01"
    worker_tracing.queue_waits([Delivery("sleep:1700000000123-0", DispatchEntry("a", "d", "sleep", parent))])
    assert not recorded.get_finished_spans()
    for _ in range(3):
        await asyncio.sleep(0)
    (wait,) = recorded.get_finished_spans()
    assert isinstance(wait, TaskSpan) and wait.name == "task.queue_wait" and wait.start_ns == 1700000000123 * 10**6


def test_a_publish_span_is_a_child_of_the_calls_span_recorded_at_its_end(recorded: InMemorySpanExporter) -> None:
    token = _under(CALL)
    try:
        with tracing.span("task.publish", {"task.count": 2}) as publish:
            assert publish is not None and not recorded.get_finished_spans()
            # Not made current: what runs inside still sees the call's span.
            assert CURRENT_SPAN.get() == (CALL.trace_id, CALL.span_id, 1)
        with pytest.raises(RuntimeError), tracing.span("task.publish"):
            raise RuntimeError("no Redis")
    finally:
        CURRENT_SPAN.reset(token)
    ok, failed = recorded.get_finished_spans()
    assert isinstance(ok, TaskSpan) and isinstance(failed, TaskSpan)
    assert (ok.trace_id, ok.parent_span_id, ok.parent_remote) == (CALL.trace_id, CALL.span_id, False)
    assert ok.attributes == {"task.count": 2} and ok.start_ns < ok.end_ns and not ok.error
    assert failed.error == repr(RuntimeError("no Redis"))


def test_no_publish_span_under_an_unsampled_call_or_none(recorded: InMemorySpanExporter) -> None:
    with tracing.span("task.publish") as outside:
        assert outside is None
    token = _under(trace.SpanContext(CALL.trace_id, CALL.span_id, False, trace.TraceFlags(0)))
    try:
        with tracing.span("task.publish") as unsampled:
            assert unsampled is None
    finally:
        CURRENT_SPAN.reset(token)
    assert not recorded.get_finished_spans()
