"""A task body that reports what a handler process can see of its worker: its user, environment, open
sockets, the files named in its payload, and the worker's own environment (/proc/<parent>/environ).

The session stack's workers import it (tests/conftest.py), so a test submits it like any other kind.
"""

from __future__ import annotations

import os
import stat
from typing import Any

from resilienttask.handlers import TaskContext, task

KIND = "test.probe"
# Descriptors checked for inherited sockets (a worker's Redis and gRPC connections would be sockets).
FD_RANGE = range(3, 1024)


def _try_read(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as exc:
        return type(exc).__name__
    return "read"


def _sockets() -> list[int]:
    found = []
    for fd in FD_RANGE:
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            continue
        if stat.S_ISSOCK(mode):
            found.append(fd)
    return found


@task(KIND, process=True)
def probe(ctx: TaskContext) -> dict[str, Any]:
    """Runs in a child process (process=True), as user code should."""
    paths = [str(p) for p in ctx.payload.get("paths", [])]
    return {
        "uid": os.getuid(),
        "euid": os.geteuid(),
        "groups": os.getgroups(),
        "environment": dict(os.environ),
        "files": {path: _try_read(path) for path in paths},
        "worker_environment": _try_read(f"/proc/{os.getppid()}/environ"),
        "sockets": _sockets(),
    }
