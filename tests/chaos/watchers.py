"""Raw WatchTasks readers that reconnect with their last resume token, as the SDK does, but keep every
message as it arrived, so the run can check each task's sequence (the SDK would hide repeats and reorders).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import grpc

from resilienttask.v1 import scheduler_pb2, scheduler_pb2_grpc

# Codes after which a client reconnects (the gateway or Envoy went away); any other ends the watcher.
RECONNECT = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED}
)


@dataclass(frozen=True)
class Seen:
    """One observation of a task: from a snapshot or from an event."""

    source: str  # "snapshot" or "event"
    version: int
    status: int
    deleted: bool = False


@dataclass
class WatchLog:
    owner_id: str
    by_task: dict[str, list[Seen]] = field(default_factory=dict)
    snapshots: int = 0
    events: int = 0
    heartbeats: int = 0
    reconnects: int = 0
    end_codes: list[str] = field(default_factory=list)
    failure: str = ""

    def known_version(self, task_id: str) -> int:
        return max((s.version for s in self.by_task.get(task_id, ())), default=0)


class RawWatcher:
    """One user's watch, reopened with its resume token whenever the stream breaks."""

    def __init__(self, address: str, token: str, owner_id: str, channel: grpc.aio.Channel | None = None) -> None:
        """With `channel` the watch shares it (many watchers over few connections); else it opens its own."""
        self.address = address
        self.channel = channel
        self.metadata = (("authorization", f"Bearer {token}"),)
        self.log = WatchLog(owner_id)
        self.resume_token = ""
        self.first_message = asyncio.Event()
        self._closed = asyncio.Event()
        self._call: grpc.aio.UnaryStreamCall | None = None  # type: ignore[type-arg]
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        self._closed.set()
        if self._call is not None:
            self._call.cancel()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _record(self, message: scheduler_pb2.WatchTasksResponse) -> None:
        self.resume_token = message.resume_token or self.resume_token
        kind = message.WhichOneof("kind")
        if kind == "snapshot":
            self.log.snapshots += 1
            for task in message.snapshot.tasks:
                self.log.by_task.setdefault(task.id, []).append(Seen("snapshot", task.version, task.status))
        elif kind == "event":
            self.log.events += 1
            task = message.event.task
            seen = Seen("event", task.version, task.status, message.event.deleted)
            self.log.by_task.setdefault(task.id, []).append(seen)
        elif kind == "heartbeat":
            self.log.heartbeats += 1
        self.first_message.set()

    async def _run(self) -> None:
        if self.channel is not None:
            await self._follow(self.channel)
            return
        async with grpc.aio.insecure_channel(self.address) as channel:
            await self._follow(channel)

    async def _follow(self, channel: grpc.aio.Channel) -> None:
        last_message = time.monotonic()
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        while not self._closed.is_set():
            call = stub.WatchTasks(
                scheduler_pb2.WatchTasksRequest(resume_token=self.resume_token), metadata=self.metadata
            )
            self._call = call
            code: grpc.StatusCode | None = None
            try:
                async for message in call:
                    last_message = time.monotonic()
                    self._record(message)
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
            except asyncio.CancelledError:
                if not self._closed.is_set():
                    raise
            if self._closed.is_set():
                return
            self.log.end_codes.append(code.name if code is not None else "OK")
            if code is not None and code not in RECONNECT:
                self.log.failure = f"stream ended with {code.name}"
                return
            if time.monotonic() - last_message > 180:
                self.log.failure = "no message for 180 s"
                return
            self.log.reconnects += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), 0.3)
