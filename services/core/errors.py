"""Domain errors, and the one place that turns them into gRPC status codes."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import asyncpg
import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)


# The trailer of gRPC's richer error model: a serialized google.rpc.Status whose details say what was wrong.
STATUS_DETAILS_KEY = "grpc-status-details-bin"


class DomainError(Exception):
    """Base of every error a handler may raise on purpose; the message reaches the client."""

    code = grpc.StatusCode.INTERNAL


class FieldError(DomainError):
    """A refusal caused by one request field: the message names it ("field: reason") for people, and the
    status carries it as a google.rpc.BadRequest field violation for programs (the SDK, the CLI, the dashboard)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        violation = error_details_pb2.BadRequest.FieldViolation(field=self.field, description=self.reason)
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
        status = status_pb2.Status(code=self.code.value[0], message=str(self), details=[detail])
        return ((STATUS_DETAILS_KEY, status.SerializeToString()),)


class InvalidArgument(FieldError):
    """A request field is malformed; the field is named by its path in the request ("filter.name_contains")."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(DomainError):
    """The thing does not exist, or belongs to someone else (never say which)."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(FieldError):
    """The value of a field is taken (an email, a worker id)."""

    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(DomainError):
    """The request is valid but not in the thing's current state."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Unauthenticated(DomainError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(DomainError):
    """The caller is known but lacks the role the call needs; the message names it."""

    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(DomainError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(DomainError):
    """A backing store is unreachable; the client may retry."""

    code = grpc.StatusCode.UNAVAILABLE


Handler = TypeVar("Handler", bound=Callable[..., Any])

# The database refused a status change outside the state machine (rt_task_changed(), migration 0004): a
# request raced another change of the same task past the checks made before the statement.
REFUSED_TRANSITION = "RT002"
# A per-user limit refused the statement (rt_limit(), migration 0008); its message names the limit.
LIMIT_REACHED = "RT003"


def translate_errors(method: Handler) -> Handler:
    """Map errors raised by a unary or server-streaming servicer method to gRPC statuses.

    Domain errors carry their own code and message; store outages are UNAVAILABLE and transaction
    conflicts ABORTED (both safe to retry); anything else is logged and answered INTERNAL without
    details, so no internal text (SQL, paths) ever reaches a client.
    """

    async def abort_for(exc: BaseException, context: grpc.aio.ServicerContext) -> None:
        if isinstance(exc, FieldError):
            await context.abort(exc.code, str(exc), exc.trailing_metadata())
        if isinstance(exc, DomainError):
            await context.abort(exc.code, str(exc))
        if isinstance(exc, asyncpg.PostgresError) and exc.sqlstate == REFUSED_TRANSITION:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the task changed status meanwhile, retry")
        if isinstance(exc, asyncpg.PostgresError) and exc.sqlstate == LIMIT_REACHED:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc.args[0]) if exc.args else "limit reached")
        if isinstance(exc, _UNAVAILABLE_ERRORS):
            log.warning("backing store unavailable", extra={"error": repr(exc)})
            await context.abort(grpc.StatusCode.UNAVAILABLE, "a backing store is unavailable, retry")
        if isinstance(exc, _CONFLICT_ERRORS):
            log.warning("transaction conflict", extra={"error": repr(exc)})
            await context.abort(grpc.StatusCode.ABORTED, "concurrent update, retry")
        log.error("unexpected error", exc_info=exc)
        await context.abort(grpc.StatusCode.INTERNAL, "internal error")

    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream_wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                async for item in method(self, request, context):
                    yield item
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await abort_for(exc, context)

        return stream_wrapper  # type: ignore[return-value]

    @functools.wraps(method)
    async def unary_wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await abort_for(exc, context)

    return unary_wrapper  # type: ignore[return-value]


# PostgreSQL unreachable, or not (yet) the primary: the connection refused or cut (class 08), the server shutting
# down, crashed or still starting (57P01-57P03), too many connections, a write that reached a standby (25006).
# And asyncpg's own client-side errors (InternalClientError), which a failover raises: with a multi-host
# DATABASE_URL, no listed server accepting writes yet (TargetServerAttributeNotMatched); and, when the primary's
# postmaster dies, its sessions end with a FATAL error before their sockets close, in that moment a pooled
# connection is handed out in a state that refuses the next statement ("cannot switch to state ...; another
# operation is in progress") until its close is seen. All safe to retry once a primary is back: the statement
# that failed was not committed, or is repeated idempotently.
POSTGRES_UNAVAILABLE: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.ReadOnlySQLTransactionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)
# Anything PostgreSQL or the way to it may raise: what code that must outlive an outage catches.
DATABASE_ERRORS: tuple[type[BaseException], ...] = (asyncpg.PostgresError, *POSTGRES_UNAVAILABLE, OSError)
_UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    *POSTGRES_UNAVAILABLE,
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    TimeoutError,
)
# What a background loop (sweeps, due publication, schedule firing, cluster gauges) logs and retries after: any
# refusal or failure of PostgreSQL or Redis. Anything else is a bug, logged with its traceback.
STORE_ERRORS: tuple[type[BaseException], ...] = (*DATABASE_ERRORS, RedisError)
# Deadlocks and serialization failures: the transaction was rolled back whole, so a retry is safe.
_CONFLICT_ERRORS: tuple[type[BaseException], ...] = (asyncpg.TransactionRollbackError,)
