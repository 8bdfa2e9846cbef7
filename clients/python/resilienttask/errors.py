"""The SDK's exception tree: every failed call raises a ResilientTaskError carrying its gRPC status code.

Catch the base class for "anything the service refused", or a subclass for one reason:

    try:
        client.get(task_id)
    except resilienttask.NotFound:
        ...
"""

from __future__ import annotations

import re

import grpc

__all__ = [
    "AlreadyExists",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResilientTaskError",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "from_rpc_error",
]


class ResilientTaskError(Exception):
    """A call failed; `code` is the gRPC status code and `message` the server's explanation."""

    default_code = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


# A field's path: names joined by dots, each maybe with an index ("selection.ids.task_ids[3]").
_FIELD_PATH = re.compile(r"[A-Za-z_]\w*(\[\d+\])?(\.[A-Za-z_]\w*(\[\d+\])?)*")


class InvalidArgument(ResilientTaskError):
    """A request field was refused; `field` names it when the server said which: its path in the request, e.g.
    "replicas", "filter.name_contains" or "selection.ids.task_ids[3]"."""

    default_code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message, code)
        head, sep, _ = message.partition(": ")
        self.field = head if sep and _FIELD_PATH.fullmatch(head) else ""


class NotFound(ResilientTaskError):
    """The task or schedule does not exist (or belongs to another user: the service never says which)."""

    default_code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ResilientTaskError):
    """E.g. signing up with an email that is taken."""

    default_code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ResilientTaskError):
    """The request is valid but not in the task's current state (e.g. deleting a running task)."""

    default_code = grpc.StatusCode.FAILED_PRECONDITION


class Unauthenticated(ResilientTaskError):
    """No token, or a token the service refused (expired, wrong key); log in again."""

    default_code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ResilientTaskError):
    """The token is valid but not for this service (e.g. a wrong audience)."""

    default_code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(ResilientTaskError):
    """A rate or size limit was hit; slow down."""

    default_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ResilientTaskError):
    """The service could not be reached (bad address, stack down) or a backing store is down."""

    default_code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ResilientTaskError, TimeoutError):
    """A call or a wait() ran out of time."""

    default_code = grpc.StatusCode.DEADLINE_EXCEEDED


_BY_CODE: dict[grpc.StatusCode, type[ResilientTaskError]] = {
    cls.default_code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        Unauthenticated,
        PermissionDenied,
        ResourceExhausted,
        Unavailable,
        DeadlineExceeded,
    )
}


def from_rpc_error(exc: grpc.RpcError) -> ResilientTaskError:
    """The SDK exception for a failed gRPC call (sync or asyncio)."""
    code: grpc.StatusCode = exc.code() if isinstance(exc, grpc.Call | grpc.aio.AioRpcError) else grpc.StatusCode.UNKNOWN
    details = exc.details() if isinstance(exc, grpc.Call | grpc.aio.AioRpcError) else str(exc)
    cls = _BY_CODE.get(code, ResilientTaskError)
    return cls(details or code.name.lower().replace("_", " "), code)
