"""ResilientTask Python SDK: a typed client (sync and asyncio) for the task orchestrator, and task handlers.

    import resilienttask

    with resilienttask.Client("localhost:8080") as client:
        client.login("me@example.com", "secret password")
        tasks = client.submit("resize", workload=30, replicas=5)
        for task in client.wait(tasks, timeout=120):
            print(task.id, task.status)

Names are imported on first use: worker child processes import `resilienttask.handlers` and
must not pay for loading gRPC.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "Client": "resilienttask.client",
    "TaskWatch": "resilienttask.client",
    "AsyncClient": "resilienttask.aio",
    "AsyncTaskWatch": "resilienttask.aio",
    "RetryPolicy": "resilienttask._retry",
    "CatchupPolicy": "resilienttask.models",
    "KindControl": "resilienttask.models",
    "OverlapPolicy": "resilienttask.models",
    "RateLimit": "resilienttask.models",
    "Schedule": "resilienttask.models",
    "Session": "resilienttask.models",
    "Snapshot": "resilienttask.models",
    "Task": "resilienttask.models",
    "TaskStats": "resilienttask.models",
    "TaskStatus": "resilienttask.models",
    "TaskTemplate": "resilienttask.models",
    "TaskUpdate": "resilienttask.models",
    "User": "resilienttask.models",
    "WaitReason": "resilienttask.models",
    "WatchEvent": "resilienttask.models",
    "Worker": "resilienttask.models",
    "WorkersUpdate": "resilienttask.models",
    "AlreadyExists": "resilienttask.errors",
    "DeadlineExceeded": "resilienttask.errors",
    "FailedPrecondition": "resilienttask.errors",
    "InvalidArgument": "resilienttask.errors",
    "NotFound": "resilienttask.errors",
    "PermissionDenied": "resilienttask.errors",
    "ResilientTaskError": "resilienttask.errors",
    "ResourceExhausted": "resilienttask.errors",
    "Unauthenticated": "resilienttask.errors",
    "Unavailable": "resilienttask.errors",
    "TaskContext": "resilienttask.handlers",
    "task": "resilienttask.handlers",
}

__all__ = [
    "AlreadyExists",
    "AsyncClient",
    "AsyncTaskWatch",
    "CatchupPolicy",
    "Client",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InvalidArgument",
    "KindControl",
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
    "TaskContext",
    "TaskStats",
    "TaskStatus",
    "TaskTemplate",
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


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'resilienttask' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:
    from resilienttask._retry import RetryPolicy
    from resilienttask.aio import AsyncClient, AsyncTaskWatch
    from resilienttask.client import Client, TaskWatch
    from resilienttask.errors import (
        AlreadyExists,
        DeadlineExceeded,
        FailedPrecondition,
        InvalidArgument,
        NotFound,
        PermissionDenied,
        ResilientTaskError,
        ResourceExhausted,
        Unauthenticated,
        Unavailable,
    )
    from resilienttask.handlers import TaskContext, task
    from resilienttask.models import (
        CatchupPolicy,
        KindControl,
        OverlapPolicy,
        RateLimit,
        Schedule,
        Session,
        Snapshot,
        Task,
        TaskStats,
        TaskStatus,
        TaskTemplate,
        TaskUpdate,
        User,
        WaitReason,
        WatchEvent,
        Worker,
        WorkersUpdate,
    )
