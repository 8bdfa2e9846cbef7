"""RPC counts by method and status code, and their durations, for every grpc.aio server of a process.

One interceptor, placed first (outermost), so calls that another interceptor refuses (UNAUTHENTICATED) are
counted too. Streams are counted and timed when they end. Only methods the server implements are counted:
an unknown path gets no series (it is answered UNIMPLEMENTED by gRPC itself), so a client sending random
method names cannot grow the label set.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from services.core.metrics import Metrics

Behaviour = Callable[..., Any]


def _code_name(context: grpc.aio.ServicerContext, default: grpc.StatusCode) -> str:
    """The status the call ended with: what the handler set or aborted with, else `default`."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):  # some grpc versions keep the number
        for status in grpc.StatusCode:
            if status.value[0] == code:
                return status.name
    return default.name


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts each call (resilienttask_grpc_server_handled_total) and times it (..._handling_seconds)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        # By method: the handler last seen and its wrapped twin, reused while the server hands out the same
        # handler (it does, unless an inner interceptor builds one per call). One entry per implemented method.
        self._wrapped_by_method: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        path = handler_call_details.method
        known = self._wrapped_by_method.get(path)
        if known is not None and known[0] is handler:
            return known[1]
        service, _, method = path.lstrip("/").rpartition("/")
        wrapped = self._wrapped(handler, service, method)
        self._wrapped_by_method[path] = (handler, wrapped)
        return wrapped

    def _record(self, service: str, method: str, code: str, started: float) -> None:
        m = self.metrics
        m.child(m.rpc_handled, service, method, code).inc()
        m.child(m.rpc_seconds, service, method).observe(time.perf_counter() - started)

    def _single_response(self, behaviour: Behaviour, service: str, method: str) -> Behaviour:
        async def timed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                result = behaviour(request, context)
                return await result if inspect.isawaitable(result) else result
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except BaseException:
                code = grpc.StatusCode.UNKNOWN  # unless the handler aborted with a code (read below)
                raise
            finally:
                self._record(service, method, _code_name(context, code), started)

        return timed

    def _streamed_response(self, behaviour: Behaviour, service: str, method: str) -> Behaviour:
        if not inspect.isasyncgenfunction(behaviour):
            # Reader/writer style (a coroutine that calls context.write) returns like a unary handler.
            return self._single_response(behaviour, service, method)

        async def timed(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                async for response in behaviour(request, context):
                    yield response
            except (asyncio.CancelledError, GeneratorExit):
                code = grpc.StatusCode.CANCELLED
                raise
            except BaseException:
                code = grpc.StatusCode.UNKNOWN
                raise
            finally:
                self._record(service, method, _code_name(context, code), started)

        return timed

    def _wrapped(self, handler: grpc.RpcMethodHandler, service: str, method: str) -> grpc.RpcMethodHandler:
        """The same handler with its behaviour timed, whichever of the four call shapes it has."""
        codecs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            behaviour = self._single_response(handler.unary_unary, service, method)
            return grpc.unary_unary_rpc_method_handler(behaviour, **codecs)
        if handler.stream_unary is not None:
            behaviour = self._single_response(handler.stream_unary, service, method)
            return grpc.stream_unary_rpc_method_handler(behaviour, **codecs)
        if handler.unary_stream is not None:
            behaviour = self._streamed_response(handler.unary_stream, service, method)
            return grpc.unary_stream_rpc_method_handler(behaviour, **codecs)
        assert handler.stream_stream is not None, "a method handler has exactly one behaviour"
        behaviour = self._streamed_response(handler.stream_stream, service, method)
        return grpc.stream_stream_rpc_method_handler(behaviour, **codecs)
