"""Submitting tasks as a test user and waiting for them to reach a state."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from resilienttask.v1 import scheduler_pb2, scheduler_pb2_grpc, task_pb2
from services.core.task_model import TERMINAL
from tests.helpers import eventually
from tests.integration.accounts import Account


def duration(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromTimedelta(timedelta(seconds=seconds))
    return value


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


class UserTasks:
    """SchedulerService calls on behalf of one account."""

    def __init__(self, channel: grpc.aio.Channel, account: Account) -> None:
        self.stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        self.account = account

    async def submit(
        self,
        kind: str = "sleep",
        *,
        workload_s: float = 0.1,
        max_runtime_s: float | None = None,
        replicas: int = 1,
        max_attempts: int = 0,
        request_id: str | None = None,
        name: str = "test task",
        run_at: datetime | None = None,
        delay_s: float | None = None,
        priority: int = 0,
    ) -> list[task_pb2.Task]:
        request = scheduler_pb2.SubmitTaskRequest(
            name=name,
            kind=kind,
            workload=duration(workload_s),
            replicas=replicas,
            max_attempts=max_attempts,
            request_id=request_id or str(uuid.uuid4()),
            priority=priority,
        )
        if max_runtime_s is not None:
            request.max_runtime.CopyFrom(duration(max_runtime_s))
        if run_at is not None:
            request.run_at.CopyFrom(timestamp(run_at))
        if delay_s is not None:
            request.delay.CopyFrom(duration(delay_s))
        reply = await self.stub.SubmitTask(request, metadata=self.account.metadata)
        return list(reply.tasks)

    async def get(self, task_id: str) -> task_pb2.Task:
        reply = await self.stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=task_id), metadata=self.account.metadata)
        return reply.task

    async def wait_for(
        self, task_id: str, statuses: Iterable[int] = TERMINAL, timeout_s: float = 30.0
    ) -> task_pb2.Task:
        wanted = set(statuses)

        async def reached() -> task_pb2.Task | None:
            task = await self.get(task_id)
            return task if task.status in wanted else None

        return await eventually(reached, timeout_s=timeout_s, interval_s=0.02, message=f"task {task_id} in {wanted}")

    async def cancel(self, task_id: str) -> task_pb2.Task:
        reply = await self.stub.CancelTask(
            scheduler_pb2.CancelTaskRequest(task_id=task_id), metadata=self.account.metadata
        )
        return reply.task

    async def cancel_batch(self, batch_id: str) -> list[task_pb2.Task]:
        reply = await self.stub.CancelBatch(
            scheduler_pb2.CancelBatchRequest(batch_id=batch_id), metadata=self.account.metadata
        )
        return list(reply.tasks)

    async def retry(self, task_id: str, delay_s: float | None = None) -> task_pb2.Task:
        request = scheduler_pb2.RetryTaskRequest(task_id=task_id)
        if delay_s is not None:
            request.delay.CopyFrom(duration(delay_s))
        reply = await self.stub.RetryTask(request, metadata=self.account.metadata)
        return reply.task

    async def stats(self) -> task_pb2.TaskStats:
        reply = await self.stub.GetStats(scheduler_pb2.GetStatsRequest(), metadata=self.account.metadata)
        return reply.stats
