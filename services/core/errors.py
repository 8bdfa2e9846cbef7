"""Domain errors, and the one place that turns them into gRPC status codes."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc

log = logging.getLogger(__name__)


class DomainError(Exception):
    """Base of every error a handler may raise on purpose; the message reaches the client."""

    code = grpc.StatusCode.INTERNAL


class InvalidArgument(DomainError):
    """A request field is malformed; the message names the field."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field


class NotFound(DomainError):
    """The thing does not exist, or belongs to someone else (never say which)."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(DomainError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(DomainError):
    """The request is valid but not in the thing's current state."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Unauthenticated(DomainError):
    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhausted(DomainError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(DomainError):
    """A backing store is unreachable; the client may retry."""

    code = grpc.StatusCode.UNAVAILABLE


Handler = TypeVar("Handler", bound=Callable[..., Any])


def translate_errors(method: Handler) -> Handler:
    """Map domain errors raised by a unary or server-streaming servicer method to gRPC statuses."""

    async def abort_for(exc: BaseException, context: grpc.aio.ServicerContext) -> None:
        if isinstance(exc, DomainError):
            await context.abort(exc.code, str(exc))
        if isinstance(exc, _UNAVAILABLE_ERRORS):
            log.warning("backing store unavailable", extra={"error": repr(exc)})
            await context.abort(grpc.StatusCode.UNAVAILABLE, "a backing store is unavailable, retry")
        raise exc

    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream_wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                async for item in method(self, request, context):
                    yield item
            except _HANDLED_ERRORS as exc:
                await abort_for(exc, context)

        return stream_wrapper  # type: ignore[return-value]

    @functools.wraps(method)
    async def unary_wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except _HANDLED_ERRORS as exc:
            await abort_for(exc, context)

    return unary_wrapper  # type: ignore[return-value]


def _unavailable_errors() -> tuple[type[BaseException], ...]:
    import asyncpg
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return (
        asyncpg.CannotConnectNowError,
        asyncpg.ConnectionDoesNotExistError,
        asyncpg.InterfaceError,
        RedisConnectionError,
        RedisTimeoutError,
        ConnectionError,
    )


_UNAVAILABLE_ERRORS = _unavailable_errors()
_HANDLED_ERRORS: tuple[type[BaseException], ...] = (DomainError, *_UNAVAILABLE_ERRORS)
