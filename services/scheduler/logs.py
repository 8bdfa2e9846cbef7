"""Handlers' log lines from the workers' streams, fenced and rate-bounded, stored in batches (services.core.task_logs).

One sink per scheduler takes the lines of every stream; its loop stores whatever accumulated while the previous
write ran: one statement checks the fences of all of them, one script call stores them. A line is kept only
while the worker that sent it holds the task with that fence (as for progress), so a superseded attempt's lines
never reach the log. Rates are bounded again here, per worker stream and per task, whatever the worker did: the
excess is counted as dropped (a gap in the numbering), never queued, so a flooding worker costs this process
little more than reading its messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, fields

import asyncpg
import grpc
import redis.asyncio as aioredis

from resilienttask.worker.v1 import worker_pb2
from services.core import task_logs
from services.core.errors import STORE_ERRORS
from services.core.settings import ConfigError, setting
from services.core.task_logs import MAX_LEVEL_CHARS, AttemptLines, TaskLogConfig, cut_text
from services.core.token_bucket import TokenBucket
from services.core.transitions.rules import is_uuid
from services.scheduler.worker_limits import WorkerInputRefused

log = logging.getLogger(__name__)

# Lines kept only while the sender holds the task with that fence; the attempt number comes from the row.
_HOLDERS = """
SELECT u.i, t.attempt FROM unnest($1::uuid[], $2::bigint[], $3::text[]) WITH ORDINALITY AS u(id, fence, worker_id, i)
JOIN tasks t ON t.id = u.id AND t.fence = u.fence AND t.worker_id = u.worker_id
"""


@dataclass(frozen=True)
class LogIntakeConfig:
    """What a scheduler accepts from one worker stream (RTASK_SCHEDULER_LOG_* variables)."""

    # Our worker sends at most 1,000 lines/s, and 100/s per attempt.
    worker_lines_per_s: float = setting(
        "RTASK_SCHEDULER_LOG_WORKER_LINES_PER_S", 2_000.0, "log lines stored per second per worker stream"
    )
    worker_burst_lines: float = setting(
        "RTASK_SCHEDULER_LOG_WORKER_BURST_LINES", 10_000.0, "the burst of log lines stored per worker stream"
    )
    task_lines_per_s: float = setting(
        "RTASK_SCHEDULER_LOG_TASK_LINES_PER_S", 200.0, "log lines stored per second per task"
    )
    task_burst_lines: float = setting(
        "RTASK_SCHEDULER_LOG_TASK_BURST_LINES", 2_000.0, "the burst of log lines per task"
    )
    # The bound on this process's memory when Redis or PostgreSQL is slow.
    max_pending_lines: float = setting(
        "RTASK_SCHEDULER_LOG_MAX_PENDING_LINES",
        50_000.0,
        "log lines waiting to be stored; beyond, new lines are dropped (counted) until a write catches up",
    )
    settle_timeout_s: float = setting(
        "RTASK_SCHEDULER_LOG_SETTLE_TIMEOUT_S", 2.0, "how long an outcome waits for its attempt's lines to be stored"
    )
    sweep_interval_s: float = setting(
        "RTASK_SCHEDULER_LOG_SWEEP_INTERVAL_S", 60.0, "how often expired logs are swept when no lines arrive"
    )
    # No worker of ours: it ends with RESOURCE_EXHAUSTED, as for progress, rather than have this process read it.
    refuse_over_factor: float = setting(
        "RTASK_SCHEDULER_LOG_REFUSE_OVER_FACTOR",
        10.0,
        "a worker stream sending log lines this many times faster than its bound (and burst) is ended with "
        "`RESOURCE_EXHAUSTED`",
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) <= 0:
                raise ConfigError(f"RTASK_SCHEDULER_LOG_{f.name.upper()} must be positive")


class StreamLogGate:
    """The rate bounds of one worker stream: one bucket for the stream, one per task it sent lines of."""

    # Task buckets kept per stream; beyond this the oldest are forgotten (a worker runs at most its slots).
    MAX_TASK_BUCKETS = 4_096

    def __init__(self, config: LogIntakeConfig) -> None:
        self.config = config
        self.worker = TokenBucket(config.worker_lines_per_s, config.worker_burst_lines)
        self.tasks: dict[str, TokenBucket] = {}
        factor = config.refuse_over_factor
        self.received = TokenBucket(config.worker_lines_per_s * factor, config.worker_burst_lines * factor)

    def check(self, logs: worker_pb2.TaskLogs) -> None:
        """End a stream that floods far beyond its bound (our worker never comes near)."""
        lines = sum(len(batch.lines) + 1 for batch in logs.batches)
        if self.received.take(lines) < lines:
            raise WorkerInputRefused(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"logs: far more than {self.config.worker_lines_per_s:g} lines per second from one worker",
            )

    def grant(self, task_id: str, wanted: int) -> int:
        bucket = self.tasks.get(task_id)
        if bucket is None:
            if len(self.tasks) >= self.MAX_TASK_BUCKETS:
                del self.tasks[next(iter(self.tasks))]
            bucket = self.tasks[task_id] = TokenBucket(self.config.task_lines_per_s, self.config.task_burst_lines)
        granted = bucket.take(wanted)
        return self.worker.take(granted) if granted else 0


@dataclass
class _Pending:
    worker_id: str
    task_id: str
    fence: int
    lines: list[tuple[int, int, int, str, str]]
    dropped_after: int


class LogSink:
    def __init__(
        self, pool: asyncpg.Pool, redis: aioredis.Redis, store: TaskLogConfig, intake: LogIntakeConfig
    ) -> None:
        self.pool = pool
        self.redis = redis
        self.store = store
        self.intake = intake
        self._pending: list[_Pending] = []
        self._pending_lines = 0
        self._submitted = 0
        self._stored = 0
        self._wake = asyncio.Event()
        self._progress = asyncio.Condition()
        # Counts since start (plain integers, for a metrics exporter or a debugger): lines stored, dropped here by
        # the rate bounds, refused by the fence.
        self.stored_lines = 0
        self.dropped_lines = 0
        self.refused_lines = 0

    def gate(self) -> StreamLogGate:
        return StreamLogGate(self.intake)

    def submit(self, worker_id: str, gate: StreamLogGate, logs: worker_pb2.TaskLogs) -> None:
        """Take one message's lines: bounded now, stored by the loop. Never waits; a flood ends the stream."""
        gate.check(logs)
        for batch in logs.batches:
            task_id = batch.task.task_id
            if not is_uuid(task_id):
                continue
            wanted = len(batch.lines)
            room = max(0, int(self.intake.max_pending_lines) - self._pending_lines)
            granted = gate.grant(task_id, min(wanted, room)) if wanted else 0
            kept = [
                (
                    max(0, line.dropped_before),
                    line.at.ToMilliseconds(),
                    int(line.stream),
                    line.level[:MAX_LEVEL_CHARS],
                    cut_text(line.text),
                )
                for line in batch.lines[:granted]
            ]
            dropped_after = max(0, batch.dropped_after) + sum(
                max(0, line.dropped_before) + 1 for line in batch.lines[granted:]
            )
            self.dropped_lines += wanted - granted
            self._pending.append(_Pending(worker_id, task_id, batch.task.fence, kept, dropped_after))
            self._pending_lines += granted
        self._submitted += 1
        self._wake.set()

    async def settled(self) -> None:
        """Until every line submitted so far is stored (or given up), at most settle_timeout_s."""
        mark = self._submitted
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.intake.settle_timeout_s), self._progress:
                await self._progress.wait_for(lambda: self._stored >= mark)

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.intake.sweep_interval_s)
            self._wake.clear()
            mark = self._submitted
            pending, self._pending, self._pending_lines = self._pending, [], 0
            try:
                await self._store(pending)
            except STORE_ERRORS as exc:  # lines are droppable; the loop must outlive any store trouble
                log.warning("log lines not stored", extra={"error": repr(exc), "batches": len(pending)})
            except Exception:
                log.exception("log lines not stored")
            async with self._progress:
                self._stored = mark
                self._progress.notify_all()

    async def _store(self, pending: list[_Pending]) -> None:
        attempts: dict[int, int] = {}
        if pending:
            rows = await self.pool.fetch(
                _HOLDERS, [p.task_id for p in pending], [p.fence for p in pending], [p.worker_id for p in pending]
            )
            attempts = {int(row["i"]) - 1: int(row["attempt"]) for row in rows}
        batches: list[AttemptLines] = []
        for i, p in enumerate(pending):
            attempt = attempts.get(i)
            if attempt is None:
                self.refused_lines += len(p.lines)
                continue
            batches.append(AttemptLines(p.task_id, attempt, p.lines, p.dropped_after))
            self.stored_lines += len(p.lines)
        if batches or not pending:
            counts = await task_logs.append(self.redis, batches, self.store)
            if counts.evicted or counts.expired:
                log.info("task logs deleted", extra={"evicted": counts.evicted, "expired": counts.expired})
