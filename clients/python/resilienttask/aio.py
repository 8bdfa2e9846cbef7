"""The clients of AuthService and SchedulerService through the edge: AsyncClient (asyncio) and Client (blocking).

aio.py is their one source: `make gen` writes client.py from it with unasync (`async` and `await` dropped,
Async names made plain, _io_async made _io_sync); the little the two do differently lives in those modules.

    with resilienttask.Client("localhost:8080") as client:  # or: async with resilienttask.AsyncClient(...)
        client.login("me@example.com", "secret password")  # each call awaited with AsyncClient
        tasks = client.submit("resize", workload=30, replicas=5)
        done = client.wait(tasks, timeout=120)
"""

from __future__ import annotations

import builtins
import functools
import os
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from types import TracebackType
from typing import Any, Unpack

import grpc
from grpc_health.v1 import health_pb2

from resilienttask import _io_async
from resilienttask._channel import DEFAULT_ADDRESS, ChannelOptions, ChannelSettings, Stubs, bearer
from resilienttask._convert import (
    ScheduleOptions,
    Seconds,
    SubmitOptions,
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
from resilienttask._retry import Reconnect, RetryPolicy, status_code
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
    MAX_PAGE_SIZE,
    BulkResult,
    TaskFilter,
    TaskHistory,
    bulk_selections,
    filter_message,
    history_from_proto,
    list_request,
)
from resilienttask.v1 import auth_pb2, operator_pb2, schedule_pb2, scheduler_pb2

__all__ = ["AsyncClient", "AsyncTaskWatch"]

DEFAULT_TIMEOUT_S = 30.0
Metadata = tuple[tuple[str, str], ...]


class AsyncTaskWatch:
    """An endless iterator of watch events that reopens the stream with its resume token when it breaks.

    Heartbeats and stale updates are absorbed. `close()` (from any thread or task) or leaving a `with`
    block ends it.
    """

    def __init__(self, open_stream: Callable[[scheduler_pb2.WatchTasksRequest, float | None], Any], state: WatchState):
        self._open = open_stream
        self._state = state
        self._closed = _io_async.Event()
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
        """End the watch: an iteration under way stops, and the stream is not reopened."""
        self._closed.set()
        call = self._call
        if call is not None:
            call.cancel()

    async def aclose(self) -> None:
        """close(), and let go of the stream."""
        self.close()
        await _io_async.close_generator(self._events)

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
                if self._closed.is_set():  # close() ran while the call opened, before it could be cancelled
                    return
                async for message in call:
                    for event in self._state.accept(message):
                        yield event
            except _io_async.RpcError as exc:
                error = exc
            except _io_async.Cancelled:
                # close() cancels the call, which may surface here; any other cancellation is the caller's.
                if not self._closed.is_set():
                    raise
            finally:
                call.cancel()
            if self._closed.is_set():
                return
            if await _io_async.wait_set(self._closed, self._state.pause_after(error)):
                return


class AsyncClient:
    """Client for AuthService and SchedulerService through the edge.

    `tls` is False (plaintext), True (system roots) or `grpc.ssl_channel_credentials(...)`; `ca_file`
    (a PEM file such as the local stack's `.rtask/tls/ca.pem`) means TLS trusting exactly that CA;
    `options` go to the channel as they are (e.g. `[("grpc.max_receive_message_length", ...)]`).
    `timeout` bounds each unary call in seconds. UNAVAILABLE is retried per `retry` for calls that
    are safe to repeat. `close()` or a `with` block closes the channel; a later call opens a new one.
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
        self._stubs = _io_async.first_stubs(self.settings)

    @property
    def address(self) -> str:
        return self.settings.address

    @property
    def _services(self) -> Stubs:
        if self._stubs is None:
            self._stubs = _io_async.open_stubs(self.settings)
        return self._stubs

    @property
    def _scheduler(self) -> Any:
        return self._services.scheduler

    @property
    def _schedules(self) -> Any:
        return self._services.schedules

    @property
    def _operator(self) -> Any:
        return self._services.operator

    async def close(self) -> None:
        stubs, self._stubs = self._stubs, None
        if stubs is not None:
            await _io_async.close_channel(stubs.channel)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- plumbing ----------------------------------------------------------------------------
    def _metadata(self, auth: bool = True) -> Metadata:
        return (bearer(self.token) if auth else ()) + trace_metadata()

    async def _call(
        self,
        method: Callable[..., Any],
        request: Any,
        *,
        auth: bool = True,
        idempotent: bool = False,
        timeout: float | None = None,
    ) -> Any:
        metadata = self._metadata(auth)
        attempts = self.retry_policy.attempts if idempotent else 1
        pauses = self.retry_policy.backoffs()
        for attempt in range(1, attempts + 1):
            try:
                return await method(request, metadata=metadata, timeout=timeout or self.timeout)
            except _io_async.RpcError as exc:
                if attempt < attempts and status_code(exc) is grpc.StatusCode.UNAVAILABLE:
                    await _io_async.sleep(next(pauses))
                    continue
                raise from_rpc_error(exc) from exc
        raise AssertionError("unreachable: the last attempt returns or raises")

    # -- auth ----------------------------------------------------------------------------------
    async def signup(self, email: str, password: str) -> Session:
        """Create a user; the client keeps its token for later calls."""
        request = auth_pb2.SignupRequest(email=email, password=password)
        session = session_from_proto(await self._call(self._services.auth.Signup, request, auth=False))
        self.token = session.token
        return session

    async def login(self, email: str, password: str) -> Session:
        """Exchange credentials for a token; the client keeps it for later calls."""
        request = auth_pb2.LoginRequest(email=email, password=password)
        reply = await self._call(self._services.auth.Login, request, auth=False, idempotent=True)
        session = session_from_proto(reply)
        self.token = session.token
        return session

    # -- tasks ---------------------------------------------------------------------------------
    async def submit(self, name: str, **options: Unpack[SubmitOptions]) -> builtins.list[Task]:
        """Submit a task (or `replicas` copies of it, atomically); returns the tasks by replica index.

        The options (SubmitOptions): kind, payload, workload, max_runtime, replicas, max_attempts, request_id,
        run_at or delay, priority, concurrency_key with concurrency_limit. A request_id is generated when none
        is given; retries after UNAVAILABLE reuse it, so they never create duplicates.
        """
        request = submit_request(name, **options)
        reply = await self._call(self._scheduler.SubmitTask, request, idempotent=True)
        return [task_from_proto(t) for t in reply.tasks]

    async def get(self, task_id: str, *, timeout: float | None = None) -> Task:
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
        (TaskFilter: name_contains=, kind=, statuses=, created_after=, ...); pages are fetched lazily."""
        request = list_request(status, batch_id, page_size, conditions)
        while True:
            reply = await self._call(self._scheduler.ListTasks, request, idempotent=True)
            for message in reply.tasks:
                yield task_from_proto(message)
            if not reply.next_page_token:
                return
            request.page_token = reply.next_page_token

    async def cancel(self, task_id: str) -> Task:
        """Cancel a task: CANCELLED at once when queued, CANCELLING while the worker stops it."""
        reply = await self._call(self._scheduler.CancelTask, scheduler_pb2.CancelTaskRequest(task_id=task_id))
        return task_from_proto(reply.task)

    async def cancel_batch(self, batch_id: str) -> builtins.list[Task]:
        """Cancel every unfinished replica of one submission; returns all of them."""
        reply = await self._call(self._scheduler.CancelBatch, scheduler_pb2.CancelBatchRequest(batch_id=batch_id))
        return [task_from_proto(t) for t in reply.tasks]

    async def retry(self, task_id: str, *, delay: Seconds | None = None) -> Task:
        """Queue a failed, timed-out or cancelled task again; with a delay it is SCHEDULED until then."""
        reply = await self._call(self._scheduler.RetryTask, retry_request(task_id, delay))
        return task_from_proto(reply.task)

    async def delete(self, task_id: str) -> None:
        """Remove a finished task."""
        await self._call(self._scheduler.DeleteTask, scheduler_pb2.DeleteTaskRequest(task_id=task_id))

    async def clear_history(self) -> int:
        """Remove every finished task of the caller; returns how many were removed."""
        reply = await self._call(self._scheduler.ClearHistory, scheduler_pb2.ClearHistoryRequest())
        return int(reply.deleted)

    async def stats(self) -> TaskStats:
        reply = await self._call(self._scheduler.GetStats, scheduler_pb2.GetStatsRequest(), idempotent=True)
        return stats_from_proto(reply.stats)

    async def workers(self) -> builtins.list[Worker]:
        reply = await self._call(self._scheduler.ListWorkers, scheduler_pb2.ListWorkersRequest(), idempotent=True)
        return [worker_from_proto(w) for w in reply.workers]

    async def kinds(self) -> builtins.list[str]:
        """Task kinds some live worker serves."""
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
        """The edge's health status name ("SERVING" when it can take calls); needs no token."""
        request = health_pb2.HealthCheckRequest()
        reply = await self._call(self._services.health.Check, request, auth=False, idempotent=True)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    # -- search, history and bulk actions ----------------------------------------------------------
    async def count(self, *, batch_id: str = "", **conditions: Unpack[TaskFilter]) -> int:
        """How many of the caller's tasks meet the conditions (as list() takes them)."""
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
        page_size: int = MAX_PAGE_SIZE,
        **conditions: Unpack[TaskFilter],
    ) -> BulkResult:
        """Cancel the listed tasks, or every task meeting the conditions, page by page until done (finished ones
        are skipped; running ones are stopped as cancel() stops them)."""
        return await self._act_on_many("Cancel", task_ids, batch_id, page_size, conditions)

    async def retry_many(
        self,
        task_ids: Iterable[str] | None = None,
        *,
        batch_id: str = "",
        page_size: int = MAX_PAGE_SIZE,
        **conditions: Unpack[TaskFilter],
    ) -> BulkResult:
        """Queue again the failed, timed-out or cancelled tasks listed or meeting the conditions, page by page
        (e.g. retry_many(statuses=["failed"])). Retries count against the per-user limits like new tasks: a page
        refused by one (nothing of it written) is asked again after pauses of up to about a minute in all, for the
        submission rate to refill; then ResourceExhausted is raised, the earlier pages retried."""
        return await self._act_on_many("Retry", task_ids, batch_id, page_size, conditions)

    async def delete_many(
        self,
        task_ids: Iterable[str] | None = None,
        *,
        batch_id: str = "",
        page_size: int = MAX_PAGE_SIZE,
        **conditions: Unpack[TaskFilter],
    ) -> BulkResult:
        """Remove the finished tasks listed or meeting the conditions, page by page (unfinished ones skipped)."""
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
                    await _io_async.sleep(pause)
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
        """Create a recurring schedule: `cron=` (with `time_zone=`) or `interval=`, the task template and
        policies as ScheduleOptions lists them. A request_id is generated when none is given, so a retry
        after UNAVAILABLE returns the schedule of the first attempt.
        """
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
        """Replace a schedule's whole spec (options left out take their defaults); slots count again from now."""
        request = schedule_pb2.UpdateScheduleRequest(schedule_id=schedule_id, spec=schedule_spec(name, spec))
        return schedule_from_proto((await self._call(self._schedules.UpdateSchedule, request)).schedule)

    async def pause_schedule(self, schedule_id: str) -> Schedule:
        """Stop firing; slots that pass while paused are not caught up."""
        request = schedule_pb2.PauseScheduleRequest(schedule_id=schedule_id)
        reply = await self._call(self._schedules.PauseSchedule, request, idempotent=True)
        return schedule_from_proto(reply.schedule)

    async def resume_schedule(self, schedule_id: str) -> Schedule:
        """Fire again from the next slot."""
        request = schedule_pb2.ResumeScheduleRequest(schedule_id=schedule_id)
        reply = await self._call(self._schedules.ResumeSchedule, request, idempotent=True)
        return schedule_from_proto(reply.schedule)

    async def trigger_schedule(self, schedule_id: str, *, request_id: str | None = None) -> builtins.list[Task]:
        """Fire now, outside the slots; returns the tasks submitted, none when the overlap policy skipped it."""
        request = schedule_pb2.TriggerScheduleRequest(
            schedule_id=schedule_id, request_id=request_id or str(uuid.uuid4())
        )
        reply = await self._call(self._schedules.TriggerSchedule, request, idempotent=True)
        return [task_from_proto(t) for t in reply.tasks]

    async def delete_schedule(self, schedule_id: str) -> None:
        """Remove a schedule; the tasks it submitted stay."""
        await self._call(self._schedules.DeleteSchedule, schedule_pb2.DeleteScheduleRequest(schedule_id=schedule_id))

    # -- live ------------------------------------------------------------------------------------
    def watch(self, resume_token: str = "", *, timeout: Seconds | None = None) -> AsyncTaskWatch:
        """Live events: a Snapshot first (unless resuming), then TaskUpdate/WorkersUpdate as they happen.

        The stream is reopened with the last resume token when a gateway dies, so no event is
        missed; when the service can no longer replay, it sends a fresh Snapshot instead.
        `timeout` ends the watch with DeadlineExceeded.
        """
        metadata = self._metadata()
        deadline = time.monotonic() + to_seconds(timeout) if timeout is not None else None
        state = WatchState(resume_token, self.retry_policy, deadline)

        def open_stream(request: scheduler_pb2.WatchTasksRequest, call_timeout: float | None) -> Any:
            return self._scheduler.WatchTasks(request, metadata=metadata, timeout=call_timeout)

        return AsyncTaskWatch(open_stream, state)

    def logs(self, task_id: str, *, follow: bool = False, after: int = 0) -> AsyncIterator[LogLine]:
        """The lines the task's handler logged after sequence `after`, oldest first; with `follow`, new ones as
        they come until the task has finished. A broken stream is reopened after the last line received, so
        none is missed; `dropped_before` on a line counts the lines the service's bounds dropped before it.
        NotFound for a task that is not the caller's.
        """
        return self._log_lines(LogCursor(task_id, follow, sequence=after), self._metadata())

    async def _log_lines(self, cursor: LogCursor, metadata: Metadata) -> AsyncIterator[LogLine]:
        reconnect = Reconnect(self.retry_policy, "log stream")
        while True:
            call = self._scheduler.WatchTaskLogs(cursor.request(), metadata=metadata)
            try:
                async for message in call:
                    reconnect.heard()
                    for line in cursor.take(message):
                        yield line
            except _io_async.RpcError as exc:
                await _io_async.sleep(reconnect.pause_after(exc))  # raises instead when it is no use
                continue
            finally:
                call.cancel()
            if cursor.finished or not cursor.follow:
                return

    async def _fetch_whole(self, tracker: WaitTracker, timeout: float | None) -> None:
        """Replace the summaries a watch gave by the whole tasks, with their results."""

        async def listed(batch_id: str) -> builtins.list[Task]:
            return [task async for task in self.list(batch_id=batch_id, page_size=BATCH_PAGE_SIZE)]

        async def got(task_id: str) -> Task:
            return await self.get(task_id, timeout=timeout)

        batches = [functools.partial(listed, batch_id) for batch_id in tracker.batches_to_list()]
        for listing in await _io_async.gather(batches, FETCH_CONCURRENCY):
            for task in listing:
                tracker.complete(task)
        singles = [functools.partial(got, task_id) for task_id in tracker.summarized()]
        for task in await _io_async.gather(singles, FETCH_CONCURRENCY):
            tracker.complete(task)

    async def wait(
        self,
        tasks: str | Task | Iterable[str | Task],
        timeout: Seconds | None = None,
        *,
        on_change: Callable[[Task], None] | None = None,
    ) -> builtins.list[Task]:
        """Wait until every task reached an end state; returns them in the order given.

        Built on watch(): no polling. `on_change` is called with each newer state of a waited task
        (e.g. to draw progress). Raises DeadlineExceeded after `timeout`, NotFound for an unknown
        (or deleted) task. The watch counts toward the user's open watch streams (20 by default):
        wait for many tasks in one call rather than in many concurrent calls.
        """
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
