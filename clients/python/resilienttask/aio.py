"""The asyncio client: the same calls as Client, awaitable, on a grpc.aio channel.

async with resilienttask.AsyncClient("localhost:8080") as client:
    await client.login("me@example.com", "secret password")
    tasks = await client.submit("resize", workload=30, replicas=5)
    async with client.watch() as events:
        async for event in events:
            ...
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import os
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar, Unpack

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from resilienttask._channel import DEFAULT_ADDRESS, ChannelOptions, ChannelSettings, bearer
from resilienttask._convert import (
    ScheduleOptions,
    Seconds,
    drain_request,
    kind_control_from_proto,
    rate_limit_request,
    retry_request,
    schedule_from_proto,
    schedule_spec,
    session_from_proto,
    stats_from_proto,
    submit_request,
    task_from_proto,
    to_seconds,
    worker_from_proto,
)
from resilienttask._logs import LogCursor
from resilienttask._retry import RECONNECT_CODES, RetryPolicy
from resilienttask._tracecontext import trace_metadata
from resilienttask._watch import BATCH_PAGE_SIZE, FETCH_CONCURRENCY, WaitTracker, WatchState, task_ids
from resilienttask.errors import DeadlineExceeded, ResourceExhausted, Unavailable, from_rpc_error
from resilienttask.models import (
    KindControl,
    LogLine,
    Schedule,
    Session,
    Snapshot,
    Task,
    TaskStats,
    TaskStatus,
    WatchEvent,
    Worker,
)
from resilienttask.search import (
    LIMIT_PAUSES_S,
    BulkResult,
    TaskFilter,
    TaskHistory,
    bulk_selections,
    filter_message,
    history_from_proto,
    list_request,
)
from resilienttask.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    operator_pb2,
    operator_pb2_grpc,
    schedule_pb2,
    schedule_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
)

__all__ = ["AsyncClient", "AsyncTaskWatch"]

R = TypeVar("R")
DEFAULT_TIMEOUT_S = 30.0


class AsyncTaskWatch:
    """Async iterator of watch events that reopens the stream with its resume token when it breaks.

    `close()` (from any task) or leaving an `async with` block ends it.
    """

    def __init__(self, open_stream: Callable[[scheduler_pb2.WatchTasksRequest, float | None], Any], state: WatchState):
        self._open = open_stream
        self._state = state
        self._closed = asyncio.Event()
        self._call: Any = None
        self._events = self._run()

    @property
    def resume_token(self) -> str:
        """Token of the last message received: pass it to watch() later to continue from there."""
        return self._state.resume_token

    @property
    def reconnects(self) -> int:
        """How often the stream was reopened (after a gateway died, a network cut, a clean end)."""
        return self._state.reconnects

    def time_left(self) -> float | None:
        """Seconds until the watch's deadline (None without one); raises DeadlineExceeded once it passed."""
        return self._state.call_timeout()

    def __aiter__(self) -> AsyncTaskWatch:
        return self

    async def __anext__(self) -> WatchEvent:
        return await self._events.__anext__()

    def close(self) -> None:
        self._closed.set()
        call = self._call
        if call is not None:
            call.cancel()

    async def aclose(self) -> None:
        self.close()
        if not getattr(self._events, "ag_running", False):  # closing a running generator is an error
            await self._events.aclose()

    async def __aenter__(self) -> AsyncTaskWatch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _run(self) -> AsyncGenerator[WatchEvent, None]:
        while not self._closed.is_set():
            error: grpc.RpcError | None = None
            call = self._open(self._state.request(), self._state.call_timeout())
            self._call = call
            try:
                async for message in call:
                    for event in self._state.accept(message):
                        yield event
            except grpc.aio.AioRpcError as exc:
                error = exc
            except asyncio.CancelledError:
                # close() cancels the call, which surfaces here; any other cancellation is the caller's.
                if not self._closed.is_set():
                    raise
            finally:
                call.cancel()
            if self._closed.is_set():
                return
            pause = self._state.pause_after(error)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), pause)


class AsyncClient:
    """Asyncio client for AuthService and SchedulerService through the edge; see Client for the options.

    The channel opens on the first call (inside the running event loop); `close()` or
    `async with` closes it.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        token: str | None = None,
        tls: bool | grpc.ChannelCredentials = False,
        ca_file: str | os.PathLike[str] | None = None,
        options: ChannelOptions = (),
        timeout: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.settings = ChannelSettings(address=address, tls=tls, options=tuple(options), ca_file=ca_file)
        self.token = token
        self.timeout = timeout
        self.retry_policy = retry or RetryPolicy()
        self._channel: grpc.aio.Channel | None = None
        self._stubs: tuple[Any, Any, Any, Any] | None = None

    @property
    def address(self) -> str:
        return self.settings.address

    def _stub_set(self) -> tuple[Any, Any, Any, Any]:
        if self._stubs is None:
            self._channel = self.settings.async_channel()
            self._stubs = (
                auth_pb2_grpc.AuthServiceStub(self._channel),
                scheduler_pb2_grpc.SchedulerServiceStub(self._channel),
                health_pb2_grpc.HealthStub(self._channel),
                schedule_pb2_grpc.ScheduleServiceStub(self._channel),
            )
        return self._stubs

    @property
    def _auth(self) -> Any:
        return self._stub_set()[0]

    @property
    def _scheduler(self) -> Any:
        return self._stub_set()[1]

    @property
    def _schedules(self) -> Any:
        return self._stub_set()[3]

    @property
    def _operator(self) -> Any:
        self._stub_set()
        return operator_pb2_grpc.OperatorServiceStub(self._channel)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(None)
            self._channel, self._stubs = None, None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- plumbing ----------------------------------------------------------------------------
    async def _call(
        self,
        method: Callable[..., Awaitable[R]],
        request: Any,
        *,
        auth: bool = True,
        idempotent: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109 - a gRPC deadline the server sees, not a local timer
    ) -> R:
        metadata = (bearer(self.token) if auth else ()) + trace_metadata()
        attempts = self.retry_policy.attempts if idempotent else 1
        pauses = self.retry_policy.backoffs()
        for attempt in range(1, attempts + 1):
            try:
                return await method(request, metadata=metadata, timeout=timeout or self.timeout)
            except grpc.aio.AioRpcError as exc:
                if attempt < attempts and exc.code() is grpc.StatusCode.UNAVAILABLE:
                    await asyncio.sleep(next(pauses))
                    continue
                raise from_rpc_error(exc) from exc
        raise AssertionError("unreachable: the last attempt returns or raises")

    # -- auth ----------------------------------------------------------------------------------
    async def signup(self, email: str, password: str) -> Session:
        """Create a user; the client keeps its token for later calls."""
        request = auth_pb2.SignupRequest(email=email, password=password)
        session = session_from_proto(await self._call(self._auth.Signup, request, auth=False))
        self.token = session.token
        return session

    async def login(self, email: str, password: str) -> Session:
        """Exchange credentials for a token; the client keeps it for later calls."""
        request = auth_pb2.LoginRequest(email=email, password=password)
        session = session_from_proto(await self._call(self._auth.Login, request, auth=False, idempotent=True))
        self.token = session.token
        return session

    # -- tasks ---------------------------------------------------------------------------------
    async def submit(
        self,
        name: str,
        *,
        kind: str = "",
        payload: Mapping[str, Any] | None = None,
        workload: Seconds = 0,
        max_runtime: Seconds | None = None,
        replicas: int = 1,
        max_attempts: int | None = None,
        request_id: str | None = None,
        run_at: datetime | None = None,
        delay: Seconds | None = None,
        priority: int = 0,
        concurrency_key: str = "",
        concurrency_limit: int = 0,
    ) -> builtins.list[Task]:
        """Submit a task or a batch of replicas; see Client.submit."""
        request = submit_request(
            name,
            kind=kind,
            payload=payload,
            workload=workload,
            max_runtime=max_runtime,
            replicas=replicas,
            max_attempts=max_attempts,
            request_id=request_id,
            run_at=run_at,
            delay=delay,
            priority=priority,
            concurrency_key=concurrency_key,
            concurrency_limit=concurrency_limit,
        )
        reply = await self._call(self._scheduler.SubmitTask, request, idempotent=True)
        return [task_from_proto(t) for t in reply.tasks]

    async def get(self, task_id: str, *, timeout: float | None = None) -> Task:  # noqa: ASYNC109
        request = scheduler_pb2.GetTaskRequest(task_id=task_id)
        reply = await self._call(self._scheduler.GetTask, request, idempotent=True, timeout=timeout)
        return task_from_proto(reply.task)

    async def list(
        self,
        status: TaskStatus | str | None = None,
        *,
        batch_id: str = "",
        page_size: int = 100,
        **conditions: Unpack[TaskFilter],
    ) -> AsyncIterator[Task]:
        """Every task of the caller (newest first), optionally of one status or batch and meeting the conditions
        (TaskFilter); pages are fetched lazily."""
        request = list_request(status, batch_id, page_size, conditions)
        while True:
            reply = await self._call(self._scheduler.ListTasks, request, idempotent=True)
            for message in reply.tasks:
                yield task_from_proto(message)
            if not reply.next_page_token:
                return
            request.page_token = reply.next_page_token

    async def cancel(self, task_id: str) -> Task:
        reply = await self._call(self._scheduler.CancelTask, scheduler_pb2.CancelTaskRequest(task_id=task_id))
        return task_from_proto(reply.task)

    async def cancel_batch(self, batch_id: str) -> builtins.list[Task]:
        reply = await self._call(self._scheduler.CancelBatch, scheduler_pb2.CancelBatchRequest(batch_id=batch_id))
        return [task_from_proto(t) for t in reply.tasks]

    async def retry(self, task_id: str, *, delay: Seconds | None = None) -> Task:
        reply = await self._call(self._scheduler.RetryTask, retry_request(task_id, delay))
        return task_from_proto(reply.task)

    async def delete(self, task_id: str) -> None:
        await self._call(self._scheduler.DeleteTask, scheduler_pb2.DeleteTaskRequest(task_id=task_id))

    async def clear_history(self) -> int:
        reply = await self._call(self._scheduler.ClearHistory, scheduler_pb2.ClearHistoryRequest())
        return int(reply.deleted)

    async def stats(self) -> TaskStats:
        reply = await self._call(self._scheduler.GetStats, scheduler_pb2.GetStatsRequest(), idempotent=True)
        return stats_from_proto(reply.stats)

    async def workers(self) -> builtins.list[Worker]:
        reply = await self._call(self._scheduler.ListWorkers, scheduler_pb2.ListWorkersRequest(), idempotent=True)
        return [worker_from_proto(w) for w in reply.workers]

    async def kinds(self) -> builtins.list[str]:
        reply = await self._call(self._scheduler.ListKinds, scheduler_pb2.ListKindsRequest(), idempotent=True)
        return builtins.list(reply.kinds)

    # -- operators (each call needs the operator role: PermissionDenied otherwise) -------------------------
    async def kind_controls(self) -> builtins.list[KindControl]:
        """Every kind with a control or a worker serving it, sorted by kind."""
        request = operator_pb2.ListKindControlsRequest()
        reply = await self._call(self._operator.ListKindControls, request, idempotent=True)
        return [kind_control_from_proto(k) for k in reply.kinds]

    async def pause_kind(self, kind: str) -> KindControl:
        """Once this returns, no task of the kind starts (every user's); running ones go on."""
        request = operator_pb2.PauseKindRequest(kind=kind)
        return kind_control_from_proto((await self._call(self._operator.PauseKind, request, idempotent=True)).kind)

    async def resume_kind(self, kind: str) -> KindControl:
        request = operator_pb2.ResumeKindRequest(kind=kind)
        return kind_control_from_proto((await self._call(self._operator.ResumeKind, request, idempotent=True)).kind)

    async def set_rate_limit(self, kind: str, starts: int, per: Seconds) -> KindControl:
        """At most `starts` starts of the kind per `per` (1 s to 1 h) across the pool; the others wait."""
        request = rate_limit_request(kind, starts, per)
        reply = await self._call(self._operator.SetKindRateLimit, request, idempotent=True)
        return kind_control_from_proto(reply.kind)

    async def clear_rate_limit(self, kind: str) -> KindControl:
        request = operator_pb2.ClearKindRateLimitRequest(kind=kind)
        reply = await self._call(self._operator.ClearKindRateLimit, request, idempotent=True)
        return kind_control_from_proto(reply.kind)

    async def drain_worker(self, worker_id: str, grace: Seconds | None = None) -> Worker:
        """Take a worker out of the pool: once this returns it starts no task; what it runs may finish for
        `grace` (default 30 s, at most 1 h), then is stopped and queued again at once without using up an
        attempt. NotFound when no live worker has the id; calling again keeps the earlier deadline."""
        reply = await self._call(self._operator.DrainWorker, drain_request(worker_id, grace), idempotent=True)
        return worker_from_proto(reply.worker)

    async def health(self) -> str:
        health = self._stub_set()[2]
        reply = await self._call(health.Check, health_pb2.HealthCheckRequest(), auth=False, idempotent=True)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    # -- search, history and bulk actions ----------------------------------------------------------
    async def count(self, *, batch_id: str = "", **conditions: Unpack[TaskFilter]) -> int:
        """How many of the caller's tasks meet the conditions; see Client.count."""
        request = scheduler_pb2.CountTasksRequest(filter=filter_message(batch_id, conditions))
        return int((await self._call(self._scheduler.CountTasks, request, idempotent=True)).count)

    async def history(self, task_id: str) -> TaskHistory:
        """The task (whole), its attempts and its transitions, oldest first."""
        request = scheduler_pb2.GetTaskHistoryRequest(task_id=task_id)
        return history_from_proto(await self._call(self._scheduler.GetTaskHistory, request, idempotent=True))

    async def cancel_many(
        self,
        task_ids: Iterable[str] | None = None,
        *,
        batch_id: str = "",
        page_size: int = 500,
        **conditions: Unpack[TaskFilter],
    ) -> BulkResult:
        """Cancel the listed tasks or every task meeting the conditions; see Client.cancel_many."""
        return await self._act_on_many("Cancel", task_ids, batch_id, page_size, conditions)

    async def retry_many(
        self,
        task_ids: Iterable[str] | None = None,
        *,
        batch_id: str = "",
        page_size: int = 500,
        **conditions: Unpack[TaskFilter],
    ) -> BulkResult:
        """Queue again the failed, timed-out or cancelled tasks selected; see Client.retry_many."""
        return await self._act_on_many("Retry", task_ids, batch_id, page_size, conditions)

    async def delete_many(
        self,
        task_ids: Iterable[str] | None = None,
        *,
        batch_id: str = "",
        page_size: int = 500,
        **conditions: Unpack[TaskFilter],
    ) -> BulkResult:
        """Remove the finished tasks selected; see Client.delete_many."""
        return await self._act_on_many("Delete", task_ids, batch_id, page_size, conditions)

    async def _act_on_many(
        self, action: str, task_ids: Iterable[str] | None, batch_id: str, page_size: int, conditions: TaskFilter
    ) -> BulkResult:
        method = getattr(self._scheduler, f"{action}Tasks")
        request_type = getattr(scheduler_pb2, f"{action}TasksRequest")
        total = BulkResult()
        for selection in bulk_selections(task_ids, batch_id, conditions):
            request = request_type(selection=selection, page_size=page_size)
            pauses = iter(LIMIT_PAUSES_S)
            while True:  # a page repeated after UNAVAILABLE cancels or deletes nothing twice; a retried task that
                # failed again meanwhile is retried again (its counts then say "affected" once more)
                try:
                    reply = await self._call(method, request, idempotent=True)
                except ResourceExhausted:
                    pause = next(pauses, None)
                    if pause is None:
                        raise
                    await asyncio.sleep(pause)
                    continue
                total += BulkResult(reply.affected, reply.skipped)
                if not reply.next_page_token:
                    break
                request.page_token = reply.next_page_token
        return total

    # -- schedules -------------------------------------------------------------------------------
    async def create_schedule(
        self, name: str, *, paused: bool = False, request_id: str | None = None, **spec: Unpack[ScheduleOptions]
    ) -> Schedule:
        """Create a recurring schedule; see Client.create_schedule."""
        request = schedule_pb2.CreateScheduleRequest(
            spec=schedule_spec(name, spec), paused=paused, request_id=request_id or str(uuid.uuid4())
        )
        reply = await self._call(self._schedules.CreateSchedule, request, idempotent=True)
        return schedule_from_proto(reply.schedule)

    async def get_schedule(self, schedule_id: str) -> Schedule:
        request = schedule_pb2.GetScheduleRequest(schedule_id=schedule_id)
        return schedule_from_proto((await self._call(self._schedules.GetSchedule, request, idempotent=True)).schedule)

    async def list_schedules(self, *, page_size: int = 100) -> AsyncIterator[Schedule]:
        """Every schedule of the caller, oldest first; pages are fetched lazily."""
        request = schedule_pb2.ListSchedulesRequest(page_size=page_size)
        while True:
            reply = await self._call(self._schedules.ListSchedules, request, idempotent=True)
            for message in reply.schedules:
                yield schedule_from_proto(message)
            if not reply.next_page_token:
                return
            request.page_token = reply.next_page_token

    async def update_schedule(self, schedule_id: str, name: str, **spec: Unpack[ScheduleOptions]) -> Schedule:
        """Replace a schedule's whole spec; see Client.update_schedule."""
        request = schedule_pb2.UpdateScheduleRequest(schedule_id=schedule_id, spec=schedule_spec(name, spec))
        return schedule_from_proto((await self._call(self._schedules.UpdateSchedule, request)).schedule)

    async def pause_schedule(self, schedule_id: str) -> Schedule:
        request = schedule_pb2.PauseScheduleRequest(schedule_id=schedule_id)
        reply = await self._call(self._schedules.PauseSchedule, request, idempotent=True)
        return schedule_from_proto(reply.schedule)

    async def resume_schedule(self, schedule_id: str) -> Schedule:
        request = schedule_pb2.ResumeScheduleRequest(schedule_id=schedule_id)
        reply = await self._call(self._schedules.ResumeSchedule, request, idempotent=True)
        return schedule_from_proto(reply.schedule)

    async def trigger_schedule(self, schedule_id: str, *, request_id: str | None = None) -> builtins.list[Task]:
        """Fire now; see Client.trigger_schedule."""
        request = schedule_pb2.TriggerScheduleRequest(
            schedule_id=schedule_id, request_id=request_id or str(uuid.uuid4())
        )
        reply = await self._call(self._schedules.TriggerSchedule, request, idempotent=True)
        return [task_from_proto(t) for t in reply.tasks]

    async def delete_schedule(self, schedule_id: str) -> None:
        await self._call(self._schedules.DeleteSchedule, schedule_pb2.DeleteScheduleRequest(schedule_id=schedule_id))

    # -- live ------------------------------------------------------------------------------------
    def watch(self, resume_token: str = "", *, timeout: Seconds | None = None) -> AsyncTaskWatch:
        """Live events with automatic resume after a broken stream; see Client.watch."""
        metadata = bearer(self.token) + trace_metadata()
        deadline = time.monotonic() + to_seconds(timeout) if timeout is not None else None
        state = WatchState(resume_token, self.retry_policy, deadline)

        def open_stream(request: scheduler_pb2.WatchTasksRequest, call_timeout: float | None) -> Any:
            return self._scheduler.WatchTasks(request, metadata=metadata, timeout=call_timeout)

        return AsyncTaskWatch(open_stream, state)

    async def logs(self, task_id: str, *, follow: bool = False, after: int = 0) -> AsyncIterator[LogLine]:
        """The task's log lines (async iterator); see Client.logs."""
        cursor = LogCursor(task_id, follow, sequence=after)
        metadata = bearer(self.token) + trace_metadata()
        pauses = self.retry_policy.backoffs()
        heard = time.monotonic()
        while True:
            call = self._scheduler.WatchTaskLogs(cursor.request(), metadata=metadata)
            try:
                async for message in call:
                    heard = time.monotonic()
                    for line in cursor.take(message):
                        yield line
            except grpc.RpcError as exc:
                code = exc.code()  # type: ignore[attr-defined]
                if code not in RECONNECT_CODES or time.monotonic() - heard > self.retry_policy.reconnect_for_s:
                    raise from_rpc_error(exc) from exc
                await asyncio.sleep(next(pauses))
                continue
            finally:
                call.cancel()
            if cursor.finished or not cursor.follow:
                return

    async def _fetch_whole(self, tracker: WaitTracker, timeout: float | None) -> None:  # noqa: ASYNC109
        """Replace the summaries a watch gave by the whole tasks, with their results (calls run together)."""
        gate = asyncio.Semaphore(FETCH_CONCURRENCY)

        async def listed(batch_id: str) -> builtins.list[Task]:
            async with gate:
                return [task async for task in self.list(batch_id=batch_id, page_size=BATCH_PAGE_SIZE)]

        async def got(task_id: str) -> Task:
            async with gate:
                return await self.get(task_id, timeout=timeout)

        for listing in await asyncio.gather(*(listed(batch_id) for batch_id in tracker.batches_to_list())):
            for task in listing:
                tracker.complete(task)
        for task in await asyncio.gather(*(got(task_id) for task_id in tracker.summarized())):
            tracker.complete(task)

    async def wait(
        self,
        tasks: str | Task | Iterable[str | Task],
        timeout: Seconds | None = None,  # noqa: ASYNC109 - mirrors Client.wait; ends the watch's deadline
        *,
        on_change: Callable[[Task], None] | None = None,
    ) -> builtins.list[Task]:
        """Wait until every task reached an end state, without polling; see Client.wait."""
        tracker = WaitTracker(task_ids(tasks))
        try:
            async with self.watch(timeout=timeout) as events:
                async for event in events:
                    changed = tracker.apply_event(event)
                    if isinstance(event, Snapshot):
                        for task_id in tracker.missing():
                            task = await self.get(task_id, timeout=events.time_left())
                            if tracker.apply(task):
                                changed.append(task)
                    if on_change is not None:
                        for task in changed:
                            on_change(task)
                    if tracker.done():
                        await self._fetch_whole(tracker, events.time_left())
                        if tracker.done():
                            return tracker.results()
        except DeadlineExceeded:
            raise tracker.timeout_error(to_seconds(timeout or 0)) from None
        raise Unavailable("the watch ended before the tasks finished")
