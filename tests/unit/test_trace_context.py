"""Trace context without a tracer provider: what the SDK sends, what the services accept, what logs carry."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
from opentelemetry import trace

from resilienttask._tracecontext import trace_metadata
from services.core import dispatch, keys, tracing
from services.core import logging as rtask_logging
from services.core.current_span import CURRENT_SPAN
from services.core.logging import JsonFormatter, task_scope
from services.worker.tracing import published_at_ns

TRACE_ID, SPAN_ID = 0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331


def test_the_sdk_sends_the_current_span_as_traceparent_and_nothing_without_one() -> None:
    assert trace_metadata() == ()
    span = trace.NonRecordingSpan(
        trace.SpanContext(TRACE_ID, SPAN_ID, is_remote=False, trace_flags=trace.TraceFlags(1))
    )
    with trace.use_span(span):
        assert trace_metadata() == (("traceparent", f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-01"),)


def test_a_dispatch_entry_carries_a_traceparent_and_drops_an_oversized_one() -> None:
    fields = {
        keys.FIELD_TASK_ID.encode(): b"t",
        keys.FIELD_DISPATCH_ID.encode(): b"d",
        keys.FIELD_KIND.encode(): b"sleep",
    }
    assert dispatch.parse_entry(fields).trace_parent == ""
    parent = f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-01"
    assert dispatch.parse_entry({**fields, b"traceparent": parent.encode()}).trace_parent == parent
    assert dispatch.parse_entry({**fields, b"traceparent": b"x" * 10_000}).trace_parent == ""
    assert dispatch.row_entry({"id": "t", "dispatch_id": "d", "kind": "k", "trace_parent": None}).trace_parent == ""


def test_the_queue_wait_starts_at_the_time_in_the_entry_id() -> None:
    assert published_at_ns("sleep:1700000000123-4") == 1_700_000_000_123_000_000
    assert published_at_ns("my:kind:1700000000123-0") == 1_700_000_000_123_000_000
    assert published_at_ns("sleep:garbage") is None


@pytest.fixture
def trace_lookup() -> Iterator[None]:
    rtask_logging.set_trace_lookup(lambda: f"{TRACE_ID:032x}")
    yield
    rtask_logging.set_trace_lookup(None)


def _line(message: str) -> dict[str, object]:
    record = logging.LogRecord("rtask.test", logging.INFO, __file__, 1, message, None, None)
    return json.loads(JsonFormatter("worker-1").format(record))


def test_log_lines_carry_the_task_id_inside_its_scope_only() -> None:
    with task_scope("task-1"):
        assert _line("handling")["task_id"] == "task-1"
    assert "task_id" not in _line("idle")
    assert "trace_id" not in _line("idle"), "tracing off: no trace id"


@pytest.mark.usefixtures("trace_lookup")
def test_log_lines_carry_the_trace_id_when_tracing_is_on() -> None:
    assert _line("handling")["trace_id"] == f"{TRACE_ID:032x}"


def test_log_lines_and_a_submission_carry_the_span_made_current_for_a_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the server span makes current (services.core.current_span) is what the trace id of log lines and the
    traceparent a submission stores say (tracing on: a tracer and the lookup tracing.configure installs)."""
    monkeypatch.setattr(tracing, "_tracer", object())
    monkeypatch.setattr(rtask_logging, "_trace_lookup", tracing._current_trace_id)
    assert tracing.current_parent() is None and "trace_id" not in _line("idle")
    token = CURRENT_SPAN.set((TRACE_ID, SPAN_ID, 1))
    try:
        assert tracing.current_parent() == f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-01"
        assert _line("handling")["trace_id"] == f"{TRACE_ID:032x}"
    finally:
        CURRENT_SPAN.reset(token)
    unsampled = CURRENT_SPAN.set((TRACE_ID, SPAN_ID, 0))
    try:
        assert tracing.current_parent() == f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-00"
    finally:
        CURRENT_SPAN.reset(unsampled)
