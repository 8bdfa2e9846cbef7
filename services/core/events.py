"""Task change events: appended to the owner's Redis stream after every committed transition.

Entry fields: `task` (serialized resilienttask.v1.Task as it now is), `prev` (the previous status
number, 0 for a new task) and `deleted` ("1" when the task was removed). WatchTasks readers decode
them with decode_event; stats can be kept up to date from (prev, task.status) alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import redis.asyncio as aioredis

from resilienttask.v1 import task_pb2
from services.core import keys

# Per-owner history kept for resuming watchers; older entries are trimmed (approximately).
EVENTS_MAXLEN = 10_000


@dataclass(frozen=True)
class TaskChange:
    owner_id: str
    task: task_pb2.Task
    previous_status: int
    deleted: bool = False


def encode_event(change: TaskChange) -> dict[bytes, bytes]:
    return {
        b"task": change.task.SerializeToString(),
        b"prev": str(change.previous_status).encode(),
        b"deleted": b"1" if change.deleted else b"0",
    }


def decode_event(owner_id: str, fields: dict[bytes, bytes]) -> TaskChange:
    task = task_pb2.Task()
    task.ParseFromString(fields[b"task"])
    return TaskChange(owner_id, task, int(fields.get(b"prev", b"0")), fields.get(b"deleted") == b"1")


async def publish_changes(redis: aioredis.Redis, changes: Iterable[TaskChange]) -> None:
    """Append every change to its owner's stream in one pipelined round trip."""
    batch = list(changes)
    if not batch:
        return
    async with redis.pipeline(transaction=False) as pipe:
        for change in batch:
            pipe.xadd(
                keys.owner_events_stream(change.owner_id),
                encode_event(change),  # type: ignore[arg-type]
                maxlen=EVENTS_MAXLEN,
                approximate=True,
            )
        await pipe.execute()
