"""What handlers log goes up the Connect stream in batches: lines of many attempts in one message, sent every
flush interval (or sooner when many are waiting), and before an attempt's outcome.

Rates are bounded twice, per attempt and per worker, by token buckets: a line over either bound is counted as
dropped (the count travels with the next line, so the scheduler numbers around the gap) and costs nothing more.
Nothing here blocks: a handler's logging call or a child's output never waits for the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from resilienttask.v1 import scheduler_pb2
from resilienttask.worker.v1 import worker_pb2
from services.core.settings import ConfigError, setting
from services.core.task_logs import MAX_LEVEL_CHARS, MAX_LINE_BYTES, cut_text
from services.core.token_bucket import TokenBucket

HeldKey = tuple[str, int]  # (task_id, fence), as in services.worker.messages (which imports this module's users)

log = logging.getLogger(__name__)

LOGGER = scheduler_pb2.LOG_STREAM_LOGGER
STDOUT = scheduler_pb2.LOG_STREAM_STDOUT
STDERR = scheduler_pb2.LOG_STREAM_STDERR


@dataclass(frozen=True)
class LogShipConfig:
    """Bounds and pace of the lines a worker sends (RTASK_WORKER_LOG_* variables)."""

    # Lines per second one attempt may log, and how many it may save up for a burst.
    task_lines_per_s: float = setting(
        "RTASK_WORKER_LOG_TASK_LINES_PER_S",
        100.0,
        "log lines one attempt may send per second; the excess is counted as dropped",
    )
    task_burst_lines: int = setting("RTASK_WORKER_LOG_TASK_BURST_LINES", 1_000, "the burst of one attempt's log lines")
    worker_lines_per_s: float = setting(
        "RTASK_WORKER_LOG_WORKER_LINES_PER_S", 1_000.0, "log lines the whole worker may send per second"
    )
    worker_burst_lines: int = setting(
        "RTASK_WORKER_LOG_WORKER_BURST_LINES", 5_000, "the burst of the worker's log lines"
    )
    flush_interval_ms: int = setting("RTASK_WORKER_LOG_FLUSH_INTERVAL_MS", 200, "waiting log lines are sent this often")
    flush_lines: int = setting("RTASK_WORKER_LOG_FLUSH_LINES", 1_000, "or as soon as this many wait")

    def __post_init__(self) -> None:
        for name in ("task_lines_per_s", "task_burst_lines", "worker_lines_per_s", "worker_burst_lines"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"RTASK_WORKER_LOG_{name.upper()} must be positive")
        if self.flush_interval_ms < 1 or self.flush_lines < 1:
            raise ConfigError("RTASK_WORKER_LOG_FLUSH_INTERVAL_MS and RTASK_WORKER_LOG_FLUSH_LINES must be positive")


@dataclass
class _AttemptState:
    bucket: TokenBucket
    lines: list[worker_pb2.TaskLogLine] = field(default_factory=list)
    # Lines dropped since the last kept one: the next kept line carries the count.
    dropped: int = 0
    closed: bool = False


class AttemptLog:
    """One attempt's handle on the shipper: what its execution feeds lines into."""

    def __init__(self, shipper: LogShipper, key: HeldKey) -> None:
        self._shipper = shipper
        self.key = key

    def line(self, stream: int, level: str, text: str) -> None:
        self._shipper.add(self.key, stream, [text], level)

    def raw_lines(self, stream: int, lines: Sequence[bytes]) -> None:
        """Lines read from a pipe (without their newline); only those let through are decoded."""
        self._shipper.add(self.key, stream, lines, "")

    def dropped(self, count: int) -> None:
        self._shipper.drop(self.key, count)

    def room(self) -> int:
        """How many lines would pass now: 0 lets a reader count a chunk's lines instead of splitting it."""
        return self._shipper.room(self.key)


class LogShipper:
    def __init__(self, send: Callable[[worker_pb2.ConnectRequest], Awaitable[bool]], config: LogShipConfig) -> None:
        self._send = send
        self.config = config
        self._worker_bucket = TokenBucket(config.worker_lines_per_s, config.worker_burst_lines)
        self._attempts: dict[HeldKey, _AttemptState] = {}
        self._waiting = 0
        self._wake = asyncio.Event()
        self._sending = asyncio.Lock()
        # Lines let through and dropped since the worker started (plain integers, for a metrics exporter).
        self.sent_lines = 0
        self.dropped_lines = 0

    def open(self, key: HeldKey) -> AttemptLog:
        self._attempts[key] = _AttemptState(TokenBucket(self.config.task_lines_per_s, self.config.task_burst_lines))
        return AttemptLog(self, key)

    def close(self, key: HeldKey) -> None:
        """The attempt ended: its state goes with the next message (or now, when nothing waits)."""
        state = self._attempts.get(key)
        if state is None:
            return
        if not state.lines and not state.dropped:
            del self._attempts[key]
        else:
            state.closed = True

    def room(self, key: HeldKey) -> int:
        state = self._attempts.get(key)
        if state is None:
            return 0
        return min(state.bucket.available(), self._worker_bucket.available())

    def drop(self, key: HeldKey, count: int) -> None:
        state = self._attempts.get(key)
        if state is not None and count > 0:
            state.dropped += count
            self.dropped_lines += count

    def add(self, key: HeldKey, stream: int, texts: Sequence[str | bytes], level: str) -> None:
        state = self._attempts.get(key)
        if state is None or not texts:
            return
        granted = state.bucket.take(len(texts))
        if granted:
            granted = self._worker_bucket.take(granted)
        now_ns = time.time_ns()
        for text in texts[:granted]:
            if isinstance(text, bytes):
                text = text[: MAX_LINE_BYTES + 4].rstrip(b"\r").decode("utf-8", "replace")
            line = worker_pb2.TaskLogLine(
                stream=stream,  # type: ignore[arg-type]
                level=level[:MAX_LEVEL_CHARS],
                text=cut_text(text),
                dropped_before=state.dropped,
            )
            line.at.FromNanoseconds(now_ns)
            state.dropped = 0
            state.lines.append(line)
        self.sent_lines += granted
        if (missed := len(texts) - granted) > 0:
            state.dropped += missed
            self.dropped_lines += missed
        self._waiting += granted
        if self._waiting >= self.config.flush_lines:
            self._wake.set()

    def take(self, only: set[str] | None = None) -> worker_pb2.ConnectRequest | None:
        """Everything waiting (of the tasks in `only`, when given) as one message; None when nothing waits."""
        logs = worker_pb2.TaskLogs()
        for key, state in list(self._attempts.items()):
            if only is not None and key[0] not in only:
                continue
            if state.lines or state.dropped:
                logs.batches.append(
                    worker_pb2.TaskLogBatch(
                        task=worker_pb2.HeldTask(task_id=key[0], fence=key[1]),
                        lines=state.lines,
                        dropped_after=state.dropped,
                    )
                )
                self._waiting -= len(state.lines)
                state.lines, state.dropped = [], 0
            if state.closed:
                del self._attempts[key]
        return worker_pb2.ConnectRequest(logs=logs) if logs.batches else None

    async def flush(self, only: set[str] | None = None) -> None:
        """Send what waits now (before an outcome, so its lines are stored before the task is finished)."""
        async with self._sending:
            message = self.take(only)
            if message is not None and not await self._send(message):
                self._lost(message.logs)

    def _lost(self, logs: worker_pb2.TaskLogs) -> None:
        """Lines that did not leave (the stream was down) count as dropped, so their numbers are skipped."""
        for batch in logs.batches:
            key = (batch.task.task_id, batch.task.fence)
            count = sum(line.dropped_before + 1 for line in batch.lines) + batch.dropped_after
            state = self._attempts.get(key)
            if state is None:
                state = self._attempts[key] = _AttemptState(TokenBucket(0, 0), closed=True)
            state.dropped += count
            self.sent_lines -= len(batch.lines)
            self.dropped_lines += len(batch.lines)

    async def run(self) -> None:
        interval_s = self.config.flush_interval_ms / 1000
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval_s)
            self._wake.clear()
            await self.flush()
