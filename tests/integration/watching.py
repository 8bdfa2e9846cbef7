"""Reading a WatchTasks stream in tests: messages by kind, with a safety timeout so a bug fails instead of hanging."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc

from resilienttask.v1 import scheduler_pb2, scheduler_pb2_grpc
from services.stack.stack import Stack
from tests.helpers import eventually
from tests.integration.accounts import Account
from tests.stack_health import gateway_health_in_envoy

Message = scheduler_pb2.WatchTasksResponse
# Only a guard against a stream that never delivers: no test measures time with it.
READ_TIMEOUT_S = 30.0


class Watch:
    """One open WatchTasks call of one account."""

    def __init__(
        self, channel: grpc.aio.Channel, account: Account, resume_token: str = "", *, accept_batches: bool = False
    ) -> None:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        request = scheduler_pb2.WatchTasksRequest(resume_token=resume_token, accept_batches=accept_batches)
        self.call = stub.WatchTasks(request, metadata=account.metadata)
        self.token = resume_token
        self.received: list[Message] = []

    async def next(
        self, kinds: tuple[str, ...] = ("snapshot", "event", "events"), timeout_s: float = READ_TIMEOUT_S
    ) -> Message:
        """The next message of one of `kinds`; the others (heartbeats, pool updates) are recorded and skipped."""
        while True:
            message = await asyncio.wait_for(self.call.read(), timeout_s)
            if message is grpc.aio.EOF:
                raise AssertionError("the watch stream ended")
            assert message.resume_token, f"every message carries a resume token: {message}"
            self.token = message.resume_token
            self.received.append(message)
            if message.WhichOneof("kind") in kinds:
                return message

    async def events_until(self, done: Callable[[list[Message]], bool]) -> list[Message]:
        """Events read until done(events so far) holds."""
        events: list[Message] = []
        while not done(events):
            events.append(await self.next(("event",)))
        return events

    def cancel(self) -> None:
        self.call.cancel()


def key(message: Message) -> tuple[str, int]:
    """(task id, version): what identifies one change."""
    return message.event.task.id, message.event.task.version


def has_version(task_id: str, version: int) -> Callable[[list[Message]], bool]:
    return lambda events: any(key(e) == (task_id, version) for e in events)


async def restart_gateway(stack: Stack, name: str) -> None:
    """Start a killed gateway again and wait until Envoy routes to it."""
    await asyncio.to_thread(stack.restart, name)

    async def healthy() -> bool:
        return await asyncio.to_thread(gateway_health_in_envoy, stack, name) == "healthy"

    await eventually(healthy, timeout_s=30, interval_s=0.1, message=f"{name} healthy in Envoy")
