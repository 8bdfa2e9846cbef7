"""The SDK's exception tree: every failed call raises a ResilientTaskError carrying its gRPC status code.

Catch the base class for "anything the service refused", or a subclass for one reason:

    try:
        client.get(task_id)
    except resilienttask.NotFound:
        ...
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

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
    """A call failed; `code` is the gRPC status code and `message` the server's explanation.

    `field` and `reason` are set when the server named the request field at fault (a google.rpc.BadRequest
    field violation in the status details): its path in the request, e.g. "replicas", "filter.name_contains" or
    "selection.ids.task_ids[3]", and what is wrong with it; otherwise both are "".
    """

    default_code = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, code: grpc.StatusCode | None = None, field: str = "", reason: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.field = field
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class InvalidArgument(ResilientTaskError):
    """A request field was refused; `field` names it (its path in the request) and `reason` says why."""

    default_code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ResilientTaskError):
    """The task or schedule does not exist (or belongs to another user: the service never says which)."""

    default_code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ResilientTaskError):
    """E.g. signing up with an email that is taken (`field` is then "email")."""

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


# The trailer of gRPC's richer error model: a serialized google.rpc.Status with machine-readable details.
_STATUS_DETAILS_KEY = "grpc-status-details-bin"


def _field_violation(trailers: Iterable[Any] | None) -> tuple[str, str]:
    """The first field violation of a google.rpc.BadRequest in the call's status details, else ("", "")."""
    for key, value in trailers or ():
        if key != _STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = status_pb2.Status()
        try:
            status.ParseFromString(value)
        except Exception:  # a garbled trailer: the status code and message still say what happened
            return "", ""
        for detail in status.details:
            refusal = error_details_pb2.BadRequest()
            if detail.Unpack(refusal) and refusal.field_violations:
                violation = refusal.field_violations[0]
                return violation.field, violation.description
    return "", ""


def from_rpc_error(exc: grpc.RpcError) -> ResilientTaskError:
    """The SDK exception for a failed gRPC call (sync or asyncio)."""
    if not isinstance(exc, grpc.Call | grpc.aio.AioRpcError):
        return ResilientTaskError(str(exc), grpc.StatusCode.UNKNOWN)
    code: grpc.StatusCode = exc.code()
    field, reason = _field_violation(exc.trailing_metadata())
    cls = _BY_CODE.get(code, ResilientTaskError)
    return cls(exc.details() or code.name.lower().replace("_", " "), code, field, reason)
