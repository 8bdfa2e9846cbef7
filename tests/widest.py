"""A task with every field at its widest: what the byte bounds of change events are checked against."""

from __future__ import annotations

from resilienttask.v1 import task_pb2

WIDEST_INT32 = -1  # negative int32 values take ten bytes on the wire, the most any varint takes
TIME_FIELDS = ("workload", "max_runtime", "created_at", "started_at", "finished_at", "run_at")


def widest_task() -> task_pb2.Task:
    """Every string longer than any bound (four-byte characters where it matters), a 64 KiB payload, a large
    result, and every number at its widest encoding."""
    task = task_pb2.Task(
        id="i" * 1000,
        name="\U0001f600" * 5000,
        kind="k" * 5000,
        status=task_pb2.TASK_STATUS_TIMED_OUT,
        progress=-1e308,
        attempt=WIDEST_INT32,
        max_attempts=WIDEST_INT32,
        worker_id="\U0001f600" * 5000,
        error="é" * 50_000,
        request_id="\U0001f600" * 5000,
        batch_id="b" * 1000,
        schedule_id="s" * 1000,
        replica_index=WIDEST_INT32,
        dead_lettered=True,
        version=-1,
    )
    for name in TIME_FIELDS:
        field = getattr(task, name)
        field.seconds, field.nanos = -(2**63), WIDEST_INT32
    task.payload.update({"blob": "p" * 65_000})
    task.result.string_value = "r" * 200_000
    return task
