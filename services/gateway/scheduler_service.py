"""SchedulerService: what users call. Every call acts for the authenticated caller and filters by owner."""

from __future__ import annotations

import asyncpg
import grpc
import redis.asyncio as aioredis

from resilienttask.v1 import scheduler_pb2, scheduler_pb2_grpc
from services.core import (
    filter_validation,
    keys,
    outbox,
    task_actions,
    task_filters,
    task_history,
    task_store,
    tracing,
    validation,
    worker_registry,
)
from services.core.auth_interceptor import current_user_id
from services.core.errors import InvalidArgument, NotFound, translate_errors
from services.core.field_limits import rule
from services.core.limits import UserLimits
from services.core.task_model import QUEUED, row_to_task, rows_to_tasks
from services.core.transitions import user as transitions
from services.gateway import bulk_actions
from services.gateway.log_watch import LogTail, LogWatchConfig, watch_task_logs
from services.gateway.watch.hub import Hub
from services.gateway.watch.seats import WatchSeats
from services.gateway.watch.stream import watch_tasks

TASK_NOT_FOUND = "task not found"
SERVICE_NAME = scheduler_pb2.DESCRIPTOR.services_by_name["SchedulerService"].full_name
RETRY_DELAY = rule(scheduler_pb2.RetryTaskRequest, "delay")


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServiceServicer):
    def __init__(
        self,
        pool: asyncpg.Pool,
        redis: aioredis.Redis,
        *,
        watch_hub: Hub,
        limits: UserLimits | None = None,
        log_watch: LogWatchConfig | None = None,
    ) -> None:
        self.pool = pool
        self.redis = redis
        self.watch_hub = watch_hub
        self.limits = limits or UserLimits()
        self.watchers = WatchSeats(redis, self.limits.max_watch_streams)
        # WatchTaskLogs streams: as many per user as WatchTasks streams, counted apart.
        self.log_watchers = WatchSeats(redis, self.limits.max_watch_streams, keys.log_watch_seats, "log watch")
        self.log_watch = log_watch or LogWatchConfig()
        self.log_tail = LogTail(redis, self.log_watch.tail_block_ms)
        self.kinds = worker_registry.KindsCache(redis)

    @translate_errors
    async def SubmitTask(
        self, request: scheduler_pb2.SubmitTaskRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.SubmitTaskResponse:
        owner = current_user_id()
        spec = validation.submission(request, await self.kinds.kinds(request.kind or validation.DEFAULT_KIND))
        # This call's span (tracing on) is the parent of every later step of these tasks, in every process.
        rows, _ = await task_actions.submit(
            self.pool, self.redis, owner, spec, self.limits, trace_parent=tracing.current_parent()
        )
        return scheduler_pb2.SubmitTaskResponse(tasks=rows_to_tasks(rows))

    @translate_errors
    async def GetTask(
        self, request: scheduler_pb2.GetTaskRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.GetTaskResponse:
        row = await task_store.get(self.pool, current_user_id(), validation.uuid_field("task_id", request.task_id))
        if row is None:
            raise NotFound(TASK_NOT_FOUND)
        return scheduler_pb2.GetTaskResponse(task=row_to_task(row))

    @translate_errors
    async def ListTasks(
        self, request: scheduler_pb2.ListTasksRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.ListTasksResponse:
        owner = current_user_id()
        limit = validation.page_size(request.page_size)
        query = filter_validation.list_query(request)
        after = validation.decode_page_token(request.page_token)
        rows = await task_filters.list_page(self.pool, owner, query, limit=limit + 1, after=after)
        next_token = ""
        if len(rows) > limit:
            rows = rows[:limit]
            next_token = validation.encode_page_token(rows[-1]["created_at"], str(rows[-1]["id"]))
        return scheduler_pb2.ListTasksResponse(tasks=rows_to_tasks(rows), next_page_token=next_token)

    async def _cancel(self, *, task_id: str | None = None, batch_id: str | None = None) -> transitions.CancelResult:
        result = await task_actions.cancel(self.pool, self.redis, current_user_id(), task_id=task_id, batch_id=batch_id)
        if not result.rows:
            raise NotFound(TASK_NOT_FOUND if task_id else "batch not found")
        return result

    @translate_errors
    async def CancelTask(
        self, request: scheduler_pb2.CancelTaskRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.CancelTaskResponse:
        result = await self._cancel(task_id=validation.uuid_field("task_id", request.task_id))
        return scheduler_pb2.CancelTaskResponse(task=row_to_task(result.rows[0]))

    @translate_errors
    async def CancelBatch(
        self, request: scheduler_pb2.CancelBatchRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.CancelBatchResponse:
        result = await self._cancel(batch_id=validation.uuid_field("batch_id", request.batch_id))
        return scheduler_pb2.CancelBatchResponse(tasks=rows_to_tasks(result.rows))

    @translate_errors
    async def RetryTask(
        self, request: scheduler_pb2.RetryTaskRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.RetryTaskResponse:
        task_id = validation.uuid_field("task_id", request.task_id)
        start = validation.delay_start("delay", request.delay, RETRY_DELAY) if request.HasField("delay") else None
        delay_ms = start.delay_ms if start is not None else 0
        retried = await transitions.retry(self.pool, current_user_id(), task_id, self.limits, delay_ms)
        if retried is None:
            raise NotFound(TASK_NOT_FOUND)
        row, change = retried
        dispatchable = row["status"] == QUEUED and not row["held"]
        await outbox.emit_and_dispatch(self.pool, self.redis, [row] if dispatchable else [], [change])
        return scheduler_pb2.RetryTaskResponse(task=row_to_task(row))

    @translate_errors
    async def DeleteTask(
        self, request: scheduler_pb2.DeleteTaskRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.DeleteTaskResponse:
        change = await transitions.delete(
            self.pool, current_user_id(), validation.uuid_field("task_id", request.task_id)
        )
        if change is None:
            raise NotFound(TASK_NOT_FOUND)
        await outbox.emit(self.redis, [change], self.pool)
        return scheduler_pb2.DeleteTaskResponse()

    @translate_errors
    async def ClearHistory(
        self, request: scheduler_pb2.ClearHistoryRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.ClearHistoryResponse:
        deleted = 0
        async for changes in transitions.clear_history(self.pool, current_user_id(), self.limits.clear_history_page):
            await outbox.emit(self.redis, changes, self.pool)
            deleted += len(changes)
        return scheduler_pb2.ClearHistoryResponse(deleted=deleted)

    @translate_errors
    async def GetStats(
        self, request: scheduler_pb2.GetStatsRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.GetStatsResponse:
        return scheduler_pb2.GetStatsResponse(stats=await task_store.stats(self.pool, current_user_id()))

    @translate_errors
    async def WatchTasks(self, request: scheduler_pb2.WatchTasksRequest, context: grpc.aio.ServicerContext) -> None:
        """Writes WatchTasksResponse messages already encoded: add_scheduler_service has them sent as they are."""
        owner = current_user_id()
        async with self.watchers.seat(owner):
            await watch_tasks(self.watch_hub, owner, request, context.write)

    @translate_errors
    async def WatchTaskLogs(
        self, request: scheduler_pb2.WatchTaskLogsRequest, context: grpc.aio.ServicerContext
    ) -> None:
        owner = current_user_id()
        task_id = validation.uuid_field("task_id", request.task_id)
        if request.after_sequence < 0:
            raise InvalidArgument("after_sequence", "must not be negative")
        if await task_store.get(self.pool, owner, task_id) is None:
            raise NotFound(TASK_NOT_FOUND)
        async with self.log_watchers.seat(owner):
            await watch_task_logs(
                self.pool, self.redis, self.log_tail, self.log_watch, owner, task_id, request, context.write
            )

    @translate_errors
    async def ListWorkers(
        self, request: scheduler_pb2.ListWorkersRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.ListWorkersResponse:
        current_user_id()
        return scheduler_pb2.ListWorkersResponse(workers=await worker_registry.pool_view(self.redis))

    @translate_errors
    async def ListKinds(
        self, request: scheduler_pb2.ListKindsRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.ListKindsResponse:
        current_user_id()
        return scheduler_pb2.ListKindsResponse(kinds=await worker_registry.known_kinds(self.redis))

    # -- search, history and bulk actions ------------------------------------------------------------------
    @translate_errors
    async def CountTasks(
        self, request: scheduler_pb2.CountTasksRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.CountTasksResponse:
        query = filter_validation.task_filter(request.filter)
        return scheduler_pb2.CountTasksResponse(count=await task_filters.count(self.pool, current_user_id(), query))

    @translate_errors
    async def GetTaskHistory(
        self, request: scheduler_pb2.GetTaskHistoryRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.GetTaskHistoryResponse:
        task_id = validation.uuid_field("task_id", request.task_id)
        history = await task_history.read(self.pool, current_user_id(), task_id)
        if history is None:
            raise NotFound(TASK_NOT_FOUND)
        return task_history.to_response(history)

    @translate_errors
    async def CancelTasks(
        self, request: scheduler_pb2.CancelTasksRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.CancelTasksResponse:
        selection = filter_validation.selection(request.selection, request.page_size, request.page_token)
        page = await bulk_actions.cancel(self.pool, self.redis, current_user_id(), selection)
        return scheduler_pb2.CancelTasksResponse(
            affected=page.affected, skipped=page.skipped, next_page_token=page.next_page_token
        )

    @translate_errors
    async def RetryTasks(
        self, request: scheduler_pb2.RetryTasksRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.RetryTasksResponse:
        selection = filter_validation.selection(request.selection, request.page_size, request.page_token)
        page = await bulk_actions.retry(self.pool, self.redis, current_user_id(), selection, self.limits)
        return scheduler_pb2.RetryTasksResponse(
            affected=page.affected, skipped=page.skipped, next_page_token=page.next_page_token
        )

    @translate_errors
    async def DeleteTasks(
        self, request: scheduler_pb2.DeleteTasksRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.DeleteTasksResponse:
        selection = filter_validation.selection(request.selection, request.page_size, request.page_token)
        page = await bulk_actions.delete(self.pool, self.redis, current_user_id(), selection)
        return scheduler_pb2.DeleteTasksResponse(
            affected=page.affected, skipped=page.skipped, next_page_token=page.next_page_token
        )


class _HandlerRecorder:
    """Stands in for a server to keep the method handlers the generated registration builds."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        """The generic handler is built again from the recorded handlers."""

    def add_registered_method_handlers(self, service_name: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.handlers = dict(handlers)


def add_scheduler_service(servicer: SchedulerServicer, server: grpc.aio.Server) -> None:
    """Register SchedulerService as the generated code does, except that WatchTasks sends its bytes as they are.

    WatchTasks writes messages encoded by the watch fan-out, each event once per gateway whatever the number of
    watchers (watch/wire.py); the generated handler would encode every message again for every call.
    """
    recorder = _HandlerRecorder()
    scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(servicer, recorder)
    handlers = recorder.handlers
    handlers["WatchTasks"] = grpc.unary_stream_rpc_method_handler(
        servicer.WatchTasks, request_deserializer=scheduler_pb2.WatchTasksRequest.FromString
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)  # type: ignore[attr-defined]  # not in grpc-stubs
