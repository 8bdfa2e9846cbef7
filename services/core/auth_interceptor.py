"""Bearer-token enforcement for one service's RPCs; the verified subject reaches handlers via a context variable.

The gateway guards SchedulerService with user tokens; the scheduler guards WorkerService with worker tokens.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from typing import Any

import grpc

from services.core.errors import Unauthenticated
from services.core.tokens import SigningKey, VerifiedTokens

log = logging.getLogger(__name__)

_current_user: ContextVar[str | None] = ContextVar("rtask_current_user", default=None)

MISSING_TOKEN = "missing bearer token: send the header 'authorization: Bearer <token>'"

# A servicer behaviour: (request or request iterator, context) -> response, awaitable or async generator.
Behaviour = Callable[..., Any]


def current_user_id() -> str:
    """The id of the authenticated caller; handlers never take it from a request field."""
    user = _current_user.get()
    if user is None:
        raise Unauthenticated("missing or invalid bearer token")
    return user


def bearer_token(metadata: Any) -> str | None:
    """The token of the single `authorization: Bearer <token>` header, or None when absent or malformed."""
    values = [value for key, value in (metadata or ()) if key == "authorization"]
    if len(values) != 1 or not isinstance(values[0], str):
        return None
    scheme, _, token = values[0].partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Verifies the bearer token of every call to the protected services before its handler runs.

    Calls to other services (AuthService, health, reflection) pass through untouched. The check runs
    inside the wrapped behaviour, that is in the call's own task, so the subject it sets is seen by
    that handler and by no other call.
    """

    def __init__(
        self,
        config: SigningKey,
        protected_prefix: str | tuple[str, ...],
        audience: str,
        exempt: frozenset[str] = frozenset(),
    ) -> None:
        """`protected_prefix`: one service's prefix or several; `exempt`: full method names under them that check
        their own credentials (worker enrolment)."""
        prefixes = (protected_prefix,) if isinstance(protected_prefix, str) else protected_prefix
        for prefix in prefixes:
            if not (prefix.startswith("/") and prefix.endswith("/")):
                raise ValueError(f"protected_prefix must look like '/package.Service/', got {prefix!r}")
        self._prefix = prefixes
        self._exempt = exempt
        self._verified = VerifiedTokens(config, audience)
        # By method: the handler last seen and its guarded twin, reused while the server hands out the same handler.
        # A twin built per call would also make the interceptors outside this one (metrics, server spans) build
        # their own twins per call, as theirs are kept by the handler they were given.
        self._guarded_by_method: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(self._prefix) or method in self._exempt:
            return handler
        known = self._guarded_by_method.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        guarded = self._guarded(handler)
        self._guarded_by_method[method] = (handler, guarded)
        return guarded

    async def _authenticate(self, context: grpc.aio.ServicerContext) -> str:
        """The verified subject, or the call is aborted with UNAUTHENTICATED."""
        token = bearer_token(context.invocation_metadata())
        message = MISSING_TOKEN
        if token is not None:
            try:
                return self._verified.subject(token)
            except Unauthenticated as exc:
                log.debug("token refused", extra={"reason": repr(exc.__cause__)})
                message = str(exc)
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    def _single_response(self, behaviour: Behaviour) -> Behaviour:
        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            subject = await self._authenticate(context)
            reset = _current_user.set(subject)
            try:
                result = behaviour(request, context)
                return await result if inspect.isawaitable(result) else result
            finally:
                _current_user.reset(reset)

        return guarded

    def _streamed_response(self, behaviour: Behaviour) -> Behaviour:
        if not inspect.isasyncgenfunction(behaviour):
            # Reader/writer style (a coroutine that calls context.write) returns like a unary handler.
            return self._single_response(behaviour)

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            # No reset here: a generator may be closed from another context, and the call's own task
            # (whose context holds the value) ends with the call.
            _current_user.set(await self._authenticate(context))
            async for response in behaviour(request, context):
                yield response

        return guarded

    def _guarded(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """The same handler with its behaviour wrapped, whichever of the four call shapes it has."""
        codecs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(self._single_response(handler.unary_unary), **codecs)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(self._single_response(handler.stream_unary), **codecs)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(self._streamed_response(handler.unary_stream), **codecs)
        assert handler.stream_stream is not None, "a method handler has exactly one behaviour"
        return grpc.stream_stream_rpc_method_handler(self._streamed_response(handler.stream_stream), **codecs)
