"""The schedulers' command channel (Redis pub/sub): each message one serialized `SchedulerCommand`.

Gateways and schedulers publish; every scheduler receives every message and acts only on those naming a worker
whose stream it holds. The message is the worker protocol's own type, so publisher and reader cannot disagree
about its fields the way two hand-written JSON shapes could.
"""

from __future__ import annotations

from typing import TypeAlias

from google.protobuf.message import DecodeError

from resilienttask.worker.v1 import worker_pb2

StopReason: TypeAlias = worker_pb2.StopReason
# The user cancelled the task; another attempt holds it (the worker stops and reports nothing).
CANCELLED: StopReason = worker_pb2.STOP_REASON_CANCELLED
SUPERSEDED: StopReason = worker_pb2.STOP_REASON_SUPERSEDED


def stop_message(worker_id: str, task_id: str, fence: int, reason: StopReason) -> bytes:
    """Stop the attempt `fence` of `task_id` on `worker_id`."""
    stop = worker_pb2.StopTaskCommand(
        worker_id=worker_id, task=worker_pb2.HeldTask(task_id=task_id, fence=fence), reason=reason
    )
    return worker_pb2.SchedulerCommand(stop=stop).SerializeToString()


def replaced_message(worker_id: str, stream_id: str) -> bytes:
    """`worker_id`'s newest stream is `stream_id`: any scheduler holding another stream of it ends that one."""
    replaced = worker_pb2.StreamReplaced(worker_id=worker_id, stream_id=stream_id)
    return worker_pb2.SchedulerCommand(replaced=replaced).SerializeToString()


def drain_message(worker_id: str, deadline_s: float, reply: str) -> bytes:
    """Drain `worker_id`: its running tasks are handed back at `deadline_s` (epoch seconds); confirm on `reply`."""
    drain = worker_pb2.DrainWorkerCommand(worker_id=worker_id, reply=reply)
    drain.deadline.FromNanoseconds(round(deadline_s * 1e9))
    return worker_pb2.SchedulerCommand(drain=drain).SerializeToString()


def parse(data: object) -> worker_pb2.SchedulerCommand | None:
    """The command in a pub/sub message's data; None for anything that is not one (logged by the caller)."""
    if not isinstance(data, bytes):
        return None
    command = worker_pb2.SchedulerCommand()
    try:
        command.ParseFromString(data)
    except DecodeError:
        return None
    return command if command.WhichOneof("command") is not None else None
