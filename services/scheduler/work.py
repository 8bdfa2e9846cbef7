"""One worker's work requests (starts and outcomes), answered in batches of whatever is ready.

A worker sends a WorkRequest whenever it has entries to start or outcomes to report; while one batch is
being recorded, the requests that arrive wait and then go together: one statement for all their
outcomes, one for all their starts, one Redis round trip for all their change events, and one message
down the stream for all the answers. No timer decides the batch: the database's own pace does.

Once the worker drains, its starts are answered DEFER without being recorded (the worker lets those entries go
to other workers); its outcomes are recorded as ever.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import asyncpg
import redis.asyncio as aioredis

from resilienttask.worker.v1 import worker_pb2
from services.core import commands, deferred, outbox, rate_limits, tracing
from services.core.errors import DomainError, Unavailable
from services.scheduler import store
from services.scheduler.connections import Mailbox
from services.scheduler.progress import ProgressBuffer
from services.scheduler.tracing import BatchTimes, record_failure, record_work

log = logging.getLogger(__name__)

DRAINING = "the worker is draining"


def verdict(result: worker_pb2.FinishResult) -> worker_pb2.FinishVerdict:
    """What the worker does with the entry of a reported outcome."""
    if result.accepted:
        return worker_pb2.FINISH_VERDICT_ACCEPTED
    if result.reason == store.SUPERSEDED:
        return worker_pb2.FINISH_VERDICT_SUPERSEDED
    return worker_pb2.FINISH_VERDICT_REFUSED


class WorkProcessor:
    """Records one worker's requests in arrival order, batching those that arrive while it is busy."""

    def __init__(
        self,
        worker_id: str,
        pool: asyncpg.Pool,
        redis: aioredis.Redis,
        mailbox: Mailbox,
        progress: ProgressBuffer,
        retry: store.RetryPolicy,
        holders: store.HolderCheck,
        max_items: int = 500,
        before_finish: Callable[[], Awaitable[None]] | None = None,
        limiter: rate_limits.RedisLimiter | None = None,
    ) -> None:
        self.worker_id = worker_id
        self.pool = pool
        self.redis = redis
        self.mailbox = mailbox
        self.progress = progress
        self.retry = retry
        self.holders = holders
        # The scheduler's one limiter (its reserved rate-limit starts serve every worker's requests).
        self.limiter = limiter or rate_limits.RedisLimiter(redis)
        # Items one WorkRequest may carry; a worker asks for at most its free slots, so this bounds a bad one.
        self.max_items = max_items
        # Awaited before outcomes are recorded: the lines the worker sent before them are stored first, so a
        # finished task's log is complete (services.scheduler.logs).
        self.before_finish = before_finish
        self._queue: list[worker_pb2.WorkRequest] = []
        self._ready = asyncio.Event()
        # Epoch seconds at which the draining worker hands back what runs; None while it is not draining.
        self.drain_deadline: float | None = None
        # Clear while a batch is being recorded: a drain waits for it, since its starts may still commit.
        self._between_batches = asyncio.Event()
        self._between_batches.set()

    async def drain(self, deadline: float) -> None:
        """Start nothing more for this worker and tell it to drain (an earlier deadline stays); returns once no
        start asked before is still being recorded, so no task starts on the worker after this returns."""
        if self.drain_deadline is None or deadline < self.drain_deadline:
            self.drain_deadline = deadline
            self.mailbox.drain(deadline)
            log.info("worker draining", extra={"worker": self.worker_id, "in_s": round(deadline - time.time(), 3)})
        await self._between_batches.wait()

    def submit(self, request: worker_pb2.WorkRequest) -> None:
        size = len(request.start) + len(request.finish)
        if size > self.max_items:
            error = f"items: at most {self.max_items} starts and outcomes per request"
            self.mailbox.answer(worker_pb2.WorkResponse(request_id=request.request_id, error=error, permanent=True))
            return
        self._queue.append(request)
        self._ready.set()

    async def run(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            batch, self._queue = self._queue, []
            if batch:
                self._between_batches.clear()
                try:
                    if self.before_finish is not None and any(request.finish for request in batch):
                        await self.before_finish()
                    await self._record(batch)
                finally:
                    self._between_batches.set()

    async def _record(self, batch: list[worker_pb2.WorkRequest]) -> None:
        finishes = [item for request in batch for item in request.finish]
        starts = [item for request in batch for item in request.start]
        # Read once: a drain arriving during this batch waits for its end (drain()), so it starts nothing after.
        draining = self.drain_deadline is not None
        if draining:
            starts = []
        began_ns = time.time_ns() if tracing.enabled() else 0
        try:
            finished, started, committed_ns = await self._commit(finishes, starts)
        except Exception as exc:  # the worker keeps its entries and asks again
            # A domain error (a transition refused) repeats on every retry: the worker then isolates the item.
            permanent = isinstance(exc, DomainError) and not isinstance(exc, Unavailable)
            log.warning("work request failed", extra={"worker": self.worker_id, "error": repr(exc)})
            if began_ns:
                now_ns = time.time_ns()
                record_failure(self.worker_id, finishes, starts, BatchTimes(began_ns, now_ns, now_ns), repr(exc))
            for request in batch:
                self.mailbox.answer(
                    worker_pb2.WorkResponse(request_id=request.request_id, error=repr(exc), permanent=permanent)
                )
            return
        finish_results, start_results = iter(finished), iter(started)
        for request in batch:
            response = worker_pb2.WorkResponse(request_id=request.request_id)
            for _ in request.finish:
                result = next(finish_results)
                result.verdict = verdict(result)
                response.finish.append(result)
            if draining:
                response.start.extend(_deferred(item.task_id) for item in request.start)
            else:
                response.start.extend(next(start_results) for _ in request.start)
            self.mailbox.answer(response)
        if began_ns:
            # Written once the answer is on its way (deferred.later): the worker starts the handlers meanwhile.
            times = BatchTimes(began_ns, committed_ns, time.time_ns())
            deferred.later(record_work, self.worker_id, finishes, finished, starts, started, times)

    async def _commit(
        self, finishes: list[worker_pb2.FinishItem], starts: list[worker_pb2.StartItem]
    ) -> tuple[list[worker_pb2.FinishResult], list[worker_pb2.StartResult], int]:
        """Outcomes and starts at once, on two connections (their tasks differ: an entry is started only
        while its task is queued, and reported only while it runs), each one statement in the common case;
        then every change event in one round trip, before the answer: a worker that gets no answer asks
        again, and the repeat re-announces. The int: when the transitions committed (epoch ns, tracing on)."""
        # Progress still buffered for these tasks must not land after (and overwrite) the outcome.
        self.progress.discard(self.worker_id, (item.task.task_id for item in finishes))
        finished, started = await asyncio.gather(
            store.finish_batch(self.pool, self.worker_id, finishes, self.retry) if finishes else _nothing(),
            store.start_batch(self.pool, self.worker_id, starts, self.holders, self.limiter) if starts else _nothing(),
            return_exceptions=True,  # both halves end before the batch is answered
        )
        for half in (finished, started):
            if isinstance(half, BaseException):
                # The whole request is answered with the error. A half that did commit is found again when
                # the worker asks again (a repeated start resumes, a repeated outcome is "already finished"),
                # and its state is announced then.
                raise half
        assert not isinstance(finished, BaseException) and not isinstance(started, BaseException)
        committed_ns = time.time_ns() if tracing.enabled() else 0
        changes = (finished.changes if finished else []) + (started.changes if started else [])
        # Fencing: a worker that lost its lease is told to stop now rather than at its next heartbeat.
        superseded = started.superseded if started else []
        await outbox.stop_and_emit(self.pool, self.redis, superseded, commands.SUPERSEDED, changes)
        return (list(finished.results) if finished else []), (list(started.results) if started else []), committed_ns


def _deferred(task_id: str) -> worker_pb2.StartResult:
    return worker_pb2.StartResult(task_id=task_id, decision=worker_pb2.START_DECISION_DEFER, reason=DRAINING)


async def _nothing() -> None:
    return None
