"""A server span per gRPC call, recorded as a task span (services.core.task_spans) rather than the SDK's live span.

OpenTelemetry's gRPC instrumentation made each call's span with the SDK (a sampler call, a live span with its
locks and bounded attribute containers, a proxy around the servicer context, the peer address parsed, a
finished-span copy encoded on the export thread): about a quarter of a millisecond of CPU per call on this
machine, the gateway's whole share of what tracing cost a drain (docs/observability-cost.md). This interceptor
gives the same span for a fraction of that: the caller's `traceparent` continued (or a new trace started), the
process's sampler's decision (services.core.sampling_rules; a sampler of no known kind is asked as the SDK would
ask it), the span current while the handler runs (services.core.current_span: so the spans, the traceparent and
the log lines made meanwhile belong to it), and at its end the span written once as its OTLP
bytes into the batch processor's queue. Its attributes are OpenTelemetry's RPC conventions: rpc.system,
rpc.service, rpc.method and rpc.grpc.status_code; a status that says the server failed (UNKNOWN, INTERNAL,
UNAVAILABLE, ...) marks the span as an error, as the instrumentation does.

An unsampled call still makes its ids current, with the sampled flag off, so nothing after it starts a sampled
trace of its own. Imported only when tracing is on.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import Token
from typing import Any

import grpc
from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import Sampler
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags, set_span_in_context
from opentelemetry.util.types import AttributeValue

from services.core.current_span import CURRENT_SPAN, SpanIds
from services.core.deferred import later
from services.core.sampling_rules import sampling_rule
from services.core.task_spans import Recorder, RemoteParent, TaskSpan

Behaviour = Callable[..., Any]
TRACEPARENT = "traceparent"
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)
# The codes that say the server failed (OpenTelemetry's semantic conventions for gRPC server spans); the others
# (NOT_FOUND, INVALID_ARGUMENT, UNAUTHENTICATED, ...) are the caller's and leave the span's status unset.
SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
_BY_NUMBER = {status.value[0]: status for status in grpc.StatusCode}


def call_status(context: grpc.aio.ServicerContext, default: grpc.StatusCode) -> grpc.StatusCode:
    """The status a call ended with: what the handler set or aborted with, else `default`."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):  # some grpc versions keep the number
        return _BY_NUMBER.get(code, default)
    return default


def _traceparent(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == TRACEPARENT:
            return value if isinstance(value, str) else None
    return None


class _Call:
    """One call's span (None when not sampled) and the token of its ids made current."""

    __slots__ = ("span", "token")

    def __init__(self, span: TaskSpan | None, token: Token[SpanIds | None]) -> None:
        self.span = span
        self.token = token


class ServerSpans(grpc.aio.ServerInterceptor):
    """A server span for each call `traced` accepts (the others pass untouched)."""

    def __init__(
        self,
        recorder: Recorder,
        sampler: Sampler,
        traced: Callable[[grpc.HandlerCallDetails], bool],
        parse_parent: Callable[[str | None], RemoteParent | None],
    ) -> None:
        self.recorder = recorder
        self.sampler = sampler
        # The sampler's decision as a plain function when it is one of the SDK's own (services.core.sampling_rules).
        self.rule = sampling_rule(sampler)
        self.traced = traced
        self.parse_parent = parse_parent
        # By method: the span's constant attributes (one entry per method a client reached; untraced and unknown
        # methods get none).
        self._attributes: dict[str, tuple[tuple[str, AttributeValue], ...]] = {}
        # By method: the handler last seen and its traced twin, reused while the server hands out the same handler,
        # as the metrics interceptor does (a twin built per call would also defeat that interceptor's reuse).
        self._wrapped_by_method: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or not self.traced(handler_call_details):
            return handler
        path = handler_call_details.method
        known = self._wrapped_by_method.get(path)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self._wrapped(handler, path)
        self._wrapped_by_method[path] = (handler, wrapped)
        return wrapped

    # -- one call's span ----------------------------------------------------------------------------------
    def _begin(self, path: str, context: grpc.aio.ServicerContext) -> _Call:
        """The call's span started and made current (its context only, when the sampler says no)."""
        start_ns = time.time_ns()
        ids = self.recorder.ids
        parent = self.parse_parent(_traceparent(context))
        if parent is None:
            trace_id, parent_span_id, parent_flags = ids.generate_trace_id(), 0, None
        else:
            trace_id, parent_span_id, parent_flags = parent
        if self.rule is not None:
            sampled = self.rule(parent_flags, trace_id)
        else:
            sampled = self._ask_sampler(path, trace_id, parent_span_id, parent_flags)
        span_id = ids.generate_span_id()
        span = None
        if sampled:
            attributes = self._attributes.get(path)
            if attributes is None:
                service, _, method = path.lstrip("/").rpartition("/")
                attributes = self._attributes[path] = (
                    ("rpc.system", "grpc"),
                    ("rpc.service", service),
                    ("rpc.method", method),
                )
            span = TaskSpan(
                self.recorder,
                path,
                trace_id,
                span_id,
                parent_span_id,
                TraceFlags.SAMPLED,
                parent is not None,
                start_ns,
                dict(attributes),
                server=True,
            )
        return _Call(span, CURRENT_SPAN.set((trace_id, span_id, TraceFlags.SAMPLED if sampled else 0)))

    def _ask_sampler(self, path: str, trace_id: int, parent_span_id: int, parent_flags: int | None) -> bool:
        """The decision of a sampler that has no rule, asked as the SDK asks it."""
        parent_context: Context | None = None
        if parent_flags is not None:
            remote = SpanContext(trace_id, parent_span_id, True, _SAMPLED if parent_flags & 1 else _NOT_SAMPLED)
            parent_context = set_span_in_context(NonRecordingSpan(remote))
        return bool(self.sampler.should_sample(parent_context, trace_id, path, SpanKind.SERVER).decision.is_sampled())

    @staticmethod
    def _end(call: _Call, context: grpc.aio.ServicerContext, default: grpc.StatusCode, error: str = "") -> None:
        CURRENT_SPAN.reset(call.token)
        span = call.span
        if span is None:
            return
        status = call_status(context, default)
        span.attributes["rpc.grpc.status_code"] = status.value[0]
        if status in SERVER_ERRORS and not error:
            error = f"{status.name}: {context.details() or ''}".rstrip(": ")
        # Written once the response is on its way (deferred.later), not before it.
        later(span.end, time.time_ns(), error if status in SERVER_ERRORS else "")

    # -- the four call shapes -----------------------------------------------------------------------------
    def _single_response(self, behaviour: Behaviour, path: str) -> Behaviour:
        async def traced(request: Any, context: grpc.aio.ServicerContext) -> Any:
            call = self._begin(path, context)
            status, error = grpc.StatusCode.OK, ""
            try:
                result = behaviour(request, context)
                return await result if inspect.isawaitable(result) else result
            except asyncio.CancelledError:
                status = grpc.StatusCode.CANCELLED
                raise
            except grpc.aio.AbortError:
                raise  # the handler's abort: its code and details are the call's (read at the end)
            except BaseException as exc:
                status, error = grpc.StatusCode.UNKNOWN, repr(exc)
                raise
            finally:
                self._end(call, context, status, error)

        return traced

    def _streamed_response(self, behaviour: Behaviour, path: str) -> Behaviour:
        if not inspect.isasyncgenfunction(behaviour):
            # Reader/writer style (a coroutine that calls context.write) returns like a unary handler.
            return self._single_response(behaviour, path)

        async def traced(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            call = self._begin(path, context)
            # Current only while the handler runs, not across yields: the consumer of a generator may close it
            # from another context (a different task), where the token could not be reset.
            current = CURRENT_SPAN.get()
            CURRENT_SPAN.reset(call.token)
            status, error = grpc.StatusCode.OK, ""
            responses = behaviour(request, context)
            try:
                while True:
                    call.token = CURRENT_SPAN.set(current)
                    try:
                        response = await responses.__anext__()
                    except StopAsyncIteration:
                        break
                    finally:
                        CURRENT_SPAN.reset(call.token)
                    yield response
            except (asyncio.CancelledError, GeneratorExit):
                status = grpc.StatusCode.CANCELLED
                raise
            except grpc.aio.AbortError:
                raise
            except BaseException as exc:
                status, error = grpc.StatusCode.UNKNOWN, repr(exc)
                raise
            finally:
                await responses.aclose()
                call.token = CURRENT_SPAN.set(current)
                self._end(call, context, status, error)

        return traced

    def _wrapped(self, handler: grpc.RpcMethodHandler, path: str) -> grpc.RpcMethodHandler:
        codecs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(self._single_response(handler.unary_unary, path), **codecs)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(self._single_response(handler.stream_unary, path), **codecs)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(self._streamed_response(handler.unary_stream, path), **codecs)
        assert handler.stream_stream is not None, "a method handler has exactly one behaviour"
        behaviour = self._streamed_response(handler.stream_stream, path)
        return grpc.stream_stream_rpc_method_handler(behaviour, **codecs)
