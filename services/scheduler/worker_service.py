"""WorkerService: one stream per worker carries the whole protocol (starts, outcomes, heartbeats,
progress, pushed cancels); see work.py for how its work requests are recorded.

The caller is the worker its token names (enrolment.py): the hello must carry that id, and every task the
stream mentions is checked against it (the holder checks live in the statements of services.core.transitions).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence

import asyncpg
import grpc
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from resilienttask.worker.v1 import worker_pb2, worker_pb2_grpc
from services.core import rate_limits, worker_registry
from services.core.auth_interceptor import current_user_id
from services.core.cancellation import cancel_and_wait
from services.core.errors import translate_errors
from services.scheduler import store
from services.scheduler.connections import ConnectedWorkers, Mailbox, announce_stream, cancel_command
from services.scheduler.enrolment import Enrolment
from services.scheduler.logs import LogSink
from services.scheduler.progress import ProgressBuffer
from services.scheduler.work import WorkProcessor
from services.scheduler.worker_limits import WorkerInputRefused, WorkerLimits

log = logging.getLogger(__name__)


class WorkerServicer(worker_pb2_grpc.WorkerServiceServicer):
    def __init__(
        self,
        pool: asyncpg.Pool,
        redis: aioredis.Redis,
        workers: ConnectedWorkers,
        progress: ProgressBuffer,
        retry: store.RetryPolicy,
        enrolment: Enrolment,
        holders: store.HolderCheck,
        limits: WorkerLimits | None = None,
        logs: LogSink | None = None,
    ) -> None:
        self.pool = pool
        self.redis = redis
        self.workers = workers
        self.progress = progress
        self.retry = retry
        self.enrolment = enrolment
        self.holders = holders
        self.limits = limits or WorkerLimits()
        self.logs = logs
        # One for every worker's start requests: the rate-limit starts it reserves serve them all.
        self.limiter = rate_limits.RedisLimiter(redis)
        # The tasks serving open streams: ended before the stores close, so no stream's clean-up (the registry
        # removal, a heartbeat check) opens a Redis connection on a closed client, where nothing closes it.
        self._streams: set[asyncio.Task[object]] = set()

    async def close(self) -> None:
        """End every open stream and wait until their clean-up has run."""
        await cancel_and_wait(list(self._streams))

    @translate_errors
    async def Enrol(
        self, request: worker_pb2.EnrolRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.EnrolResponse:
        issued = await self.enrolment.enrol(request, context)
        response = worker_pb2.EnrolResponse(worker_id=request.worker_id, token=issued.token)
        response.expires_at.FromSeconds(int(issued.expires_at))
        return response

    async def Connect(
        self, request_iterator: AsyncIterator[worker_pb2.ConnectRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[worker_pb2.ConnectResponse]:
        caller = current_user_id()  # the worker id the token names, verified by the interceptor
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.HasField("hello"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "hello: the first message must introduce the worker")
            return
        hello = first.hello
        try:
            self.limits.check_hello(hello)
        except WorkerInputRefused as exc:
            await context.abort(exc.code, str(exc))
        if hello.worker_id != caller:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, "hello.worker_id: must be the worker id the token was issued for"
            )
        serving = asyncio.current_task()
        assert serving is not None
        self._streams.add(serving)
        info = worker_registry.WorkerInfo(id=hello.worker_id, slots=hello.slots, kinds=list(hello.kinds))
        mailbox = self.workers.attach(hello.worker_id)
        work = WorkProcessor(
            hello.worker_id,
            self.pool,
            self.redis,
            mailbox,
            self.progress,
            self.retry,
            self.holders,
            self.limits.max_items_per_request,
            before_finish=self.logs.settled if self.logs is not None else None,
            limiter=self.limiter,
        )
        mailbox.on_drain = work.drain
        with contextlib.suppress(RedisError, OSError):  # without Redis, the next heartbeat checks again
            if (deadline := await worker_registry.drain_deadline(self.redis, hello.worker_id)) is not None:
                await work.drain(deadline)  # a worker told to drain before this stream: still draining
        reader = asyncio.create_task(self._read(request_iterator, info, mailbox, work))
        processor = asyncio.create_task(work.run())
        for task in (reader, processor):  # the stream ends when the worker stops writing, or a loop fails
            task.add_done_callback(lambda _: mailbox.close())
        try:
            await self._register(info, announce=True)
            with contextlib.suppress(RedisError, OSError):  # without Redis, no other scheduler could deliver anyway
                await announce_stream(self.redis, hello.worker_id, mailbox)
            log.info("worker connected", extra={"worker": info.id, "slots": info.slots})
            while (message := await mailbox.next()) is not None:
                yield message
        finally:
            await cancel_and_wait([reader, processor])
            for task in (reader, processor):
                if task.done() and not task.cancelled():
                    task.exception()  # retrieved: how the stream ended was logged where it happened, if at all
            self.workers.detach(hello.worker_id, mailbox)
            # A replaced stream leaves the registry to its successor (removing it would call the worker gone).
            if hello.worker_id not in self.workers and not mailbox.replaced:
                with contextlib.suppress(RedisError, OSError):
                    await worker_registry.remove(self.redis, hello.worker_id)
            log.info("worker disconnected", extra={"worker": info.id, "replaced": mailbox.replaced})
            self._streams.discard(serving)
        refused = reader.exception() if reader.done() and not reader.cancelled() else None
        if isinstance(refused, WorkerInputRefused):
            await context.abort(refused.code, str(refused))
        if mailbox.replaced:
            await context.abort(grpc.StatusCode.ABORTED, "a newer stream of this worker replaced this one")

    async def _read(
        self,
        requests: AsyncIterator[worker_pb2.ConnectRequest],
        info: worker_registry.WorkerInfo,
        mailbox: Mailbox,
        work: WorkProcessor,
    ) -> None:
        checking: asyncio.Task[None] | None = None
        progress_rate = self.limits.progress_rate(info.slots)
        log_gate = self.logs.gate() if self.logs is not None else None
        try:
            async for message in requests:
                if message.HasField("work"):
                    work.submit(message.work)
                elif message.HasField("heartbeat"):
                    self.limits.check_heartbeat(message.heartbeat, info.slots)
                    # Answered before anything else: the worker fences itself when the answers stop coming.
                    mailbox.ack(message.heartbeat.sequence)
                    if checking is None or checking.done():  # a slow check is not queued behind another
                        checking = asyncio.create_task(self._heartbeat(info, message.heartbeat, mailbox, work))
                elif message.HasField("progress"):
                    report = message.progress
                    self.limits.check_progress(report)
                    if not progress_rate.take(1):
                        raise WorkerInputRefused(
                            grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"progress: at most {progress_rate.rate_per_s:g} reports per second for "
                            f"a worker of {info.slots} slots",
                        )
                    self.progress.add(report.task.task_id, report.task.fence, info.id, report.progress)
                elif message.HasField("logs"):
                    if self.logs is not None and log_gate is not None:
                        self.logs.submit(info.id, log_gate, message.logs)
                elif message.HasField("hello"):
                    raise WorkerInputRefused(grpc.StatusCode.INVALID_ARGUMENT, "hello: only the first message")
        finally:
            if checking is not None:
                await cancel_and_wait([checking])

    async def _heartbeat(
        self,
        info: worker_registry.WorkerInfo,
        heartbeat: worker_pb2.WorkerHeartbeat,
        mailbox: Mailbox,
        work: WorkProcessor,
    ) -> None:
        busy = len(heartbeat.tasks)
        announce = busy != info.busy
        info.busy = busy
        info.last_heartbeat = time.time()
        marked = await self._register(info, announce=announce, holding=[t.task_id for t in heartbeat.tasks])
        await self._drain_if_told(info, heartbeat, work, marked)
        # The safety net behind pushed commands: anything the worker should not be running is repeated here.
        try:
            stops = await store.stops_for_held(self.pool, info.id, heartbeat.tasks)
        except Exception as exc:  # a database outage must not end the worker's stream; the next beat retries
            log.warning("heartbeat check skipped", extra={"worker": info.id, "error": repr(exc)})
            return
        for task_id, fence, reason in stops:
            mailbox.cancel(cancel_command(task_id, fence, reason))

    async def _drain_if_told(
        self,
        info: worker_registry.WorkerInfo,
        heartbeat: worker_pb2.WorkerHeartbeat,
        work: WorkProcessor,
        marked: float | None,
    ) -> None:
        """The safety net behind a pushed drain: a worker marked draining (a command this scheduler missed) is
        drained now; a worker draining on its own (shutting down) is marked, so the pool shows it."""
        if marked is not None and (work.drain_deadline is None or marked < work.drain_deadline):
            await work.drain(marked)
        elif heartbeat.draining and marked is None:
            deadline = time.time() + heartbeat.drain_remaining.ToMilliseconds() / 1000
            with contextlib.suppress(RedisError, OSError):
                deadline = await worker_registry.mark_draining(self.redis, info.id, deadline)
            await work.drain(deadline)

    async def _register(
        self, info: worker_registry.WorkerInfo, *, announce: bool, holding: Sequence[str] | None = None
    ) -> float | None:
        """Store the worker in the registry; returns its drain deadline (epoch s) when it is marked draining."""
        try:
            return await worker_registry.upsert(self.redis, info, announce=announce, holding=holding)
        except (RedisError, OSError) as exc:
            log.warning("worker registry unavailable", extra={"error": repr(exc)})
            return None
