"""Conversions between the WorkerService messages and the worker's own types."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format, struct_pb2

from resilienttask.json_values import struct_to_dict
from resilienttask.v1 import task_pb2
from resilienttask.worker.v1 import worker_pb2
from services.worker.execution import TaskSpec
from services.worker.runner import AttemptOutcome

HeldKey = tuple[str, int]  # (task_id, fence): one attempt of one task


def spec_from_task(task: task_pb2.Task) -> TaskSpec:
    """The attempt the scheduler started, as the handler sees it (payload Struct → dict, Durations → seconds)."""
    return TaskSpec(
        task_id=task.id,
        kind=task.kind,
        attempt=task.attempt,
        payload=struct_to_dict(task.payload) if task.HasField("payload") else {},
        workload_s=task.workload.ToTimedelta().total_seconds(),
        max_runtime_s=task.max_runtime.ToTimedelta().total_seconds(),
    )


def held(key: HeldKey) -> worker_pb2.HeldTask:
    return worker_pb2.HeldTask(task_id=key[0], fence=key[1])


def to_value(value: Any) -> struct_pb2.Value:
    """A JSON-compatible Python value as google.protobuf.Value."""
    message = struct_pb2.Value()
    json_format.ParseDict(value, message)
    return message


def finish_item(key: HeldKey, outcome: AttemptOutcome) -> worker_pb2.FinishItem:
    item = worker_pb2.FinishItem(task=held(key), outcome=outcome.outcome, error=outcome.error)
    if outcome.result is not None:
        item.result.CopyFrom(to_value(outcome.result))
    return item
