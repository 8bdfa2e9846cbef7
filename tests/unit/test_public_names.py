"""The SDK's public surface is pinned: a name added, removed or moved must show up here in review."""

from __future__ import annotations

import inspect
import subprocess
import sys

import grpc

import resilienttask
from resilienttask import errors

PUBLIC = [
    "AlreadyExists",
    "AsyncClient",
    "AsyncTaskWatch",
    "BulkResult",
    "CatchupPolicy",
    "Client",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InvalidArgument",
    "KindControl",
    "LogLine",
    "NotFound",
    "OverlapPolicy",
    "PermissionDenied",
    "RateLimit",
    "ResilientTaskError",
    "ResourceExhausted",
    "RetryPolicy",
    "Schedule",
    "Session",
    "Snapshot",
    "Task",
    "TaskAttempt",
    "TaskContext",
    "TaskFilter",
    "TaskHistory",
    "TaskStats",
    "TaskStatus",
    "TaskTemplate",
    "TaskTransition",
    "TaskUpdate",
    "TaskWatch",
    "Unauthenticated",
    "Unavailable",
    "User",
    "WaitReason",
    "WatchEvent",
    "Worker",
    "WorkersUpdate",
    "__version__",
    "task",
]

CLIENT_METHODS = [
    "cancel",
    "cancel_batch",
    "cancel_many",
    "clear_history",
    "clear_rate_limit",
    "close",
    "count",
    "create_schedule",
    "delete",
    "delete_many",
    "delete_schedule",
    "drain_worker",
    "get",
    "get_schedule",
    "health",
    "history",
    "kind_controls",
    "kinds",
    "list",
    "list_schedules",
    "login",
    "logs",
    "pause_kind",
    "pause_schedule",
    "resume_kind",
    "resume_schedule",
    "retry",
    "retry_many",
    "set_rate_limit",
    "signup",
    "stats",
    "submit",
    "trigger_schedule",
    "update_schedule",
    "wait",
    "watch",
    "workers",
]


def test_exported_names_are_pinned() -> None:
    assert resilienttask.__all__ == PUBLIC


def test_every_exported_name_resolves() -> None:
    for name in PUBLIC:
        assert getattr(resilienttask, name) is not None, name
        if name not in ("__version__", "WatchEvent"):  # WatchEvent is a union alias
            assert getattr(resilienttask, name).__module__.startswith("resilienttask."), name


def test_unknown_names_raise_attribute_error() -> None:
    try:
        resilienttask.NoSuchThing  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_both_clients_offer_the_same_calls() -> None:
    def public(cls: type) -> list[str]:
        return sorted(n for n in vars(cls) if not n.startswith("_") and callable(getattr(cls, n)))

    assert public(resilienttask.Client) == CLIENT_METHODS
    assert public(resilienttask.AsyncClient) == CLIENT_METHODS


def test_errors_form_one_tree_carrying_status_codes() -> None:
    expected = {
        "InvalidArgument": grpc.StatusCode.INVALID_ARGUMENT,
        "NotFound": grpc.StatusCode.NOT_FOUND,
        "AlreadyExists": grpc.StatusCode.ALREADY_EXISTS,
        "FailedPrecondition": grpc.StatusCode.FAILED_PRECONDITION,
        "Unauthenticated": grpc.StatusCode.UNAUTHENTICATED,
        "PermissionDenied": grpc.StatusCode.PERMISSION_DENIED,
        "ResourceExhausted": grpc.StatusCode.RESOURCE_EXHAUSTED,
        "Unavailable": grpc.StatusCode.UNAVAILABLE,
        "DeadlineExceeded": grpc.StatusCode.DEADLINE_EXCEEDED,
    }
    for name, code in expected.items():
        cls = getattr(resilienttask, name)
        assert issubclass(cls, resilienttask.ResilientTaskError)
        error = cls("boom")
        assert error.code is code
        assert str(error) == f"{code.name}: boom"
    assert issubclass(resilienttask.DeadlineExceeded, TimeoutError)
    # The field comes from the status details (tests/integration/test_field_errors.py), never from the message.
    refused = errors.InvalidArgument("replicas: must be between 1 and 50", None, "replicas", "must be between 1 and 50")
    assert (refused.field, refused.reason, refused.code) == (
        "replicas",
        "must be between 1 and 50",
        code.__class__.INVALID_ARGUMENT,
    )
    assert errors.InvalidArgument("replicas: must be between 1 and 50").field == ""


def test_status_names_are_the_cli_and_json_names() -> None:
    assert [s.value for s in resilienttask.TaskStatus] == [
        "scheduled",
        "queued",
        "running",
        "cancelling",
        "succeeded",
        "failed",
        "cancelled",
        "timed_out",
        "unspecified",
    ]
    assert {s for s in resilienttask.TaskStatus if s.terminal} == {
        resilienttask.TaskStatus.SUCCEEDED,
        resilienttask.TaskStatus.FAILED,
        resilienttask.TaskStatus.CANCELLED,
        resilienttask.TaskStatus.TIMED_OUT,
    }


def test_both_clients_take_the_same_parameters() -> None:
    """Sync and asyncio calls stay symmetric: the same names, parameters, kinds and defaults."""

    def parameters(cls: type, name: str) -> list[tuple[str, object, object]]:
        signature = inspect.signature(getattr(cls, name))
        return [(p.name, p.kind, p.default) for p in signature.parameters.values()]

    for name in CLIENT_METHODS:
        assert parameters(resilienttask.Client, name) == parameters(resilienttask.AsyncClient, name), name


def test_policy_names_are_the_cli_and_json_names() -> None:
    assert [p.value for p in resilienttask.OverlapPolicy] == ["skip", "allow", "cancel_previous"]
    assert [p.value for p in resilienttask.CatchupPolicy] == ["skip", "latest", "all"]


def test_handler_code_does_not_load_grpc() -> None:
    """Worker child processes import resilienttask.handlers; the package must not drag gRPC in."""
    probe = "import sys, resilienttask.handlers; print('grpc' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
