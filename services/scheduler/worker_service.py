"""WorkerService: workers start tasks (fenced leases), stream heartbeats and progress, and finish them."""

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

from resilienttask.v1 import worker_pb2, worker_pb2_grpc
from services.core import outbox, worker_registry
from services.core.errors import InvalidArgument, translate_errors
from services.scheduler import store
from services.scheduler.connections import ConnectedWorkers
from services.scheduler.progress import ProgressBuffer

log = logging.getLogger(__name__)
MAX_BATCH = 500


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

    @translate_errors
    async def StartTasks(
        self, request: worker_pb2.StartTasksRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.StartTasksResponse:
        _check_batch(request.worker_id, len(request.items))
        outcome = await store.start_batch(self.pool, request.worker_id, request.items)
        # Before the reply: a worker that gets no reply asks again, and the repeat re-announces the state.
        await outbox.emit(self.redis, outcome.changes, self.pool)
        # Fencing: the worker that lost its lease stops the handler now rather than at its next heartbeat.
        await outbox.push_stop(self.redis, outcome.superseded, store.SUPERSEDED)
        return worker_pb2.StartTasksResponse(results=outcome.results)

    @translate_errors
    async def FinishTasks(
        self, request: worker_pb2.FinishTasksRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.FinishTasksResponse:
        _check_batch(request.worker_id, len(request.items))
        # Progress still buffered for these tasks must not land after (and overwrite) the outcome.
        self.progress.discard(item.task.task_id for item in request.items)
        outcome = await store.finish_batch(self.pool, request.worker_id, request.items, self.retry)
        await outbox.emit(self.redis, outcome.changes, self.pool)
        return worker_pb2.FinishTasksResponse(results=outcome.results)

    async def Connect(
        self, request_iterator: AsyncIterator[worker_pb2.ConnectRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[worker_pb2.ConnectResponse]:
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.HasField("hello") or not first.hello.worker_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "hello: the first message must introduce the worker")
            return
        hello = first.hello
        info = worker_registry.WorkerInfo(id=hello.worker_id, slots=hello.slots, kinds=list(hello.kinds))
        queue = self.workers.attach(hello.worker_id)
        reader = asyncio.create_task(self._read(request_iterator, info, queue))
        await self._register(info, announce=True)
        log.info("worker connected", extra={"worker": info.id, "slots": info.slots})
        try:
            while not reader.done():
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    yield getter.result()
                else:
                    getter.cancel()
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            self.workers.detach(hello.worker_id, queue)
            if hello.worker_id not in self.workers:
                with contextlib.suppress(RedisError, OSError):
                    await worker_registry.remove(self.redis, hello.worker_id)
            log.info("worker disconnected", extra={"worker": info.id})

    async def _read(
        self,
        requests: AsyncIterator[worker_pb2.ConnectRequest],
        info: worker_registry.WorkerInfo,
        queue: asyncio.Queue[worker_pb2.ConnectResponse],
    ) -> None:
        async for message in requests:
            if message.HasField("heartbeat"):
                await self._heartbeat(info, message.heartbeat, queue)
            elif message.HasField("progress"):
                report = message.progress
                self.progress.add(report.task.task_id, report.task.fence, report.progress)

    async def _heartbeat(
        self,
        info: worker_registry.WorkerInfo,
        heartbeat: worker_pb2.WorkerHeartbeat,
        queue: asyncio.Queue[worker_pb2.ConnectResponse],
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
            command = worker_pb2.CancelCommand(task=worker_pb2.HeldTask(task_id=task_id, fence=fence), reason=reason)
            queue.put_nowait(worker_pb2.ConnectResponse(cancel=command))

    async def _register(self, info: worker_registry.WorkerInfo, *, announce: bool) -> None:
        try:
            await worker_registry.upsert(self.redis, info, announce=announce)
        except (RedisError, OSError) as exc:
            log.warning("worker registry unavailable", extra={"error": repr(exc)})


def _check_batch(worker_id: str, size: int) -> None:
    if not worker_id:
        raise InvalidArgument("worker_id", "is required")
    if size > MAX_BATCH:
        raise InvalidArgument("items", f"at most {MAX_BATCH} per call")
