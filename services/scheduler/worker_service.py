"""WorkerService: one stream per worker carries the whole protocol (starts, outcomes, heartbeats,
progress, pushed cancels); see work.py for how its work requests are recorded."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import asyncpg
import grpc
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from resilienttask.worker.v1 import worker_pb2, worker_pb2_grpc
from services.core import worker_registry
from services.core.cancellation import cancel_and_wait
from services.scheduler import store
from services.scheduler.connections import ConnectedWorkers, Mailbox, cancel_command
from services.scheduler.progress import ProgressBuffer
from services.scheduler.work import WorkProcessor

log = logging.getLogger(__name__)


class WorkerServicer(worker_pb2_grpc.WorkerServiceServicer):
    def __init__(
        self,
        pool: asyncpg.Pool,
        redis: aioredis.Redis,
        workers: ConnectedWorkers,
        progress: ProgressBuffer,
        retry: store.RetryPolicy,
    ) -> None:
        self.pool = pool
        self.redis = redis
        self.workers = workers
        self.progress = progress
        self.retry = retry
        # The tasks serving open streams: ended before the stores close, so no stream's clean-up (the registry
        # removal, a heartbeat check) opens a Redis connection on a closed client, where nothing closes it.
        self._streams: set[asyncio.Task[object]] = set()

    async def close(self) -> None:
        """End every open stream and wait until their clean-up has run."""
        await cancel_and_wait(list(self._streams))

    async def Connect(
        self, request_iterator: AsyncIterator[worker_pb2.ConnectRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[worker_pb2.ConnectResponse]:
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.HasField("hello") or not first.hello.worker_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "hello: the first message must introduce the worker")
            return
        hello = first.hello
        serving = asyncio.current_task()
        assert serving is not None
        self._streams.add(serving)
        info = worker_registry.WorkerInfo(id=hello.worker_id, slots=hello.slots, kinds=list(hello.kinds))
        mailbox = self.workers.attach(hello.worker_id)
        work = WorkProcessor(hello.worker_id, self.pool, self.redis, mailbox, self.progress, self.retry)
        reader = asyncio.create_task(self._read(request_iterator, info, mailbox, work))
        processor = asyncio.create_task(work.run())
        await self._register(info, announce=True)
        log.info("worker connected", extra={"worker": info.id, "slots": info.slots})
        for task in (reader, processor):  # the stream ends when the worker stops writing, or a loop fails
            task.add_done_callback(lambda _: mailbox.close())
        try:
            while (message := await mailbox.next()) is not None:
                yield message
        finally:
            await cancel_and_wait([reader, processor])
            for task in (reader, processor):
                if task.done() and not task.cancelled():
                    task.exception()  # retrieved: how the stream ended was logged where it happened, if at all
            self.workers.detach(hello.worker_id, mailbox)
            if hello.worker_id not in self.workers:
                with contextlib.suppress(RedisError, OSError):
                    await worker_registry.remove(self.redis, hello.worker_id)
            log.info("worker disconnected", extra={"worker": info.id})
            self._streams.discard(serving)

    async def _read(
        self,
        requests: AsyncIterator[worker_pb2.ConnectRequest],
        info: worker_registry.WorkerInfo,
        mailbox: Mailbox,
        work: WorkProcessor,
    ) -> None:
        checking: asyncio.Task[None] | None = None
        try:
            async for message in requests:
                if message.HasField("work"):
                    work.submit(message.work)
                elif message.HasField("heartbeat"):
                    # Answered before anything else: the worker fences itself when the answers stop coming.
                    mailbox.ack(message.heartbeat.sequence)
                    if checking is None or checking.done():  # a slow check is not queued behind another
                        checking = asyncio.create_task(self._heartbeat(info, message.heartbeat, mailbox))
                elif message.HasField("progress"):
                    report = message.progress
                    self.progress.add(report.task.task_id, report.task.fence, report.progress)
        finally:
            if checking is not None:
                await cancel_and_wait([checking])

    async def _heartbeat(
        self, info: worker_registry.WorkerInfo, heartbeat: worker_pb2.WorkerHeartbeat, mailbox: Mailbox
    ) -> None:
        busy = len(heartbeat.tasks)
        announce = busy != info.busy
        info.busy = busy
        info.last_heartbeat = time.time()
        await self._register(info, announce=announce)
        # The safety net behind pushed commands: anything the worker should not be running is repeated here.
        try:
            stops = await store.stops_for_held(self.pool, heartbeat.tasks)
        except Exception as exc:  # a database outage must not end the worker's stream; the next beat retries
            log.warning("heartbeat check skipped", extra={"worker": info.id, "error": repr(exc)})
            return
        for task_id, fence, reason in stops:
            mailbox.cancel(cancel_command(task_id, fence, reason))

    async def _register(self, info: worker_registry.WorkerInfo, *, announce: bool) -> None:
        try:
            await worker_registry.upsert(self.redis, info, announce=announce)
        except (RedisError, OSError) as exc:
            log.warning("worker registry unavailable", extra={"error": repr(exc)})
