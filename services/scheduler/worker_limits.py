"""Bounds on what one worker stream may send, so a faulty or hostile worker cannot grow the scheduler's
memory, the registry or the database's load without limit. A stream that breaks one ends with a status
naming it (the worker's own code never comes near them)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import grpc

from resilienttask.worker.v1 import worker_pb2
from services.core.token_bucket import TokenBucket
from services.core.worker_credentials import worker_id_problem

# Task ids are UUIDs; anything longer is not ours.
MAX_TASK_ID_CHARS = 36


class WorkerInputRefused(Exception):
    """A worker message broke a bound; the stream ends with `code` and this message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class WorkerLimits:
    """Per-stream bounds (the defaults are far above what our worker sends)."""

    max_slots: int = 1024
    max_kinds: int = 256
    max_kind_chars: int = 128
    # Tasks one heartbeat may list: a worker runs at most its slots, plus attempts whose outcome is still
    # being reported; this is checked against max(slots * held_per_slot, min_held_tasks).
    held_per_slot: int = 4
    min_held_tasks: int = 64
    # Progress reports per second per stream, per slot: our worker sends at most 10 per running task.
    progress_per_slot_per_s: float = 20.0
    # Items (starts + outcomes) in one WorkRequest; a worker asks for at most its free slots.
    max_items_per_request: int = 500

    def check_hello(self, hello: worker_pb2.WorkerHello) -> None:
        problem = worker_id_problem(hello.worker_id)
        if problem is not None:
            raise WorkerInputRefused(grpc.StatusCode.INVALID_ARGUMENT, f"hello.{problem}")
        if not 1 <= hello.slots <= self.max_slots:
            raise WorkerInputRefused(
                grpc.StatusCode.INVALID_ARGUMENT, f"hello.slots: must be between 1 and {self.max_slots}"
            )
        if len(hello.kinds) > self.max_kinds:
            raise WorkerInputRefused(grpc.StatusCode.INVALID_ARGUMENT, f"hello.kinds: at most {self.max_kinds}")
        for kind in hello.kinds:
            if not 1 <= len(kind) <= self.max_kind_chars or not kind.isprintable():
                raise WorkerInputRefused(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"hello.kinds: each 1 to {self.max_kind_chars} printable characters",
                )

    def check_heartbeat(self, heartbeat: worker_pb2.WorkerHeartbeat, slots: int) -> None:
        limit = max(self.held_per_slot * slots, self.min_held_tasks)
        if len(heartbeat.tasks) > limit:
            raise WorkerInputRefused(
                grpc.StatusCode.INVALID_ARGUMENT, f"heartbeat.tasks: at most {limit} for a worker of {slots} slots"
            )
        for held in heartbeat.tasks:
            _check_task_id(held.task_id, "heartbeat.tasks.task_id")

    def check_progress(self, report: worker_pb2.ProgressReport) -> None:
        _check_task_id(report.task.task_id, "progress.task.task_id")
        if not math.isfinite(report.progress) or not 0.0 <= report.progress <= 1.0:
            raise WorkerInputRefused(grpc.StatusCode.INVALID_ARGUMENT, "progress.progress: must be from 0.0 to 1.0")

    def progress_rate(self, slots: int) -> TokenBucket:
        """The bucket of one worker stream's progress reports: a report passes when take() grants it."""
        rate = self.progress_per_slot_per_s * max(1, slots)
        return TokenBucket(rate_per_s=rate, burst=max(rate, 1.0))


def _check_task_id(task_id: str, name: str) -> None:
    if len(task_id) > MAX_TASK_ID_CHARS:
        raise WorkerInputRefused(grpc.StatusCode.INVALID_ARGUMENT, f"{name}: at most {MAX_TASK_ID_CHARS} characters")
