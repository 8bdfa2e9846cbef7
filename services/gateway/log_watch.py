"""WatchTaskLogs: a task's stored log lines after a position, then (follow) new ones as they are stored.

Each call reads its own lines with XRANGE from its own position, so a resumed call misses nothing and a slow
client only holds its place. What tells a following call that there is more is the gateway's one tail: a single
blocking XREAD over the logs of every call waiting here, which rings the waiting calls of a log when it grows
(one Redis connection per gateway, however many follow). A call that has read everything arms its bell again.
On a cluster the logs live in several slots (services.core.keys.KeyLayout): the tail reads each shard with
waiting calls at once, one blocking read per shard, and rings after all have answered (within tail_block_ms).

A following call ends once its task is finished (its status, checked when the log is quiet) and the lines
stored by then are sent: workers send an attempt's lines before its outcome and the scheduler stores them
before it records the outcome, so nothing of a finished task arrives later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from resilienttask.v1 import scheduler_pb2
from services.core import keys, task_logs
from services.core.errors import STORE_ERRORS
from services.core.redis_client import key_layout
from services.core.settings import ConfigError, setting
from services.core.task_model import TERMINAL
from services.gateway.watch.hub import raise_if_cancelled

log = logging.getLogger(__name__)

Message = scheduler_pb2.WatchTaskLogsResponse
Write = Callable[[Message], Awaitable[None]]
RETRY_DELAY_S = 0.5

_STATUS = "SELECT status FROM tasks WHERE id = $1 AND owner_id = $2"


@dataclass(frozen=True)
class LogWatchConfig:
    """Pace of WatchTaskLogs (RTASK_LOG_WATCH_* variables); every value a positive integer."""

    # Lines per message (each at most 4 KiB of text: 500 stay under gRPC's 4 MiB message limit).
    page_lines: int = setting("RTASK_LOG_WATCH_PAGE_LINES", 500, "`WatchTaskLogs`: lines per message (at most 1000)")
    # A call that starts waiting meanwhile is included at the next read.
    tail_block_ms: int = setting("RTASK_LOG_WATCH_TAIL_BLOCK_MS", 250, "`WatchTaskLogs`: the gateway's blocking read")
    status_check_ms: int = setting(
        "RTASK_LOG_WATCH_STATUS_CHECK_MS", 1_000, "`WatchTaskLogs`: how often a quiet log's task is checked for its end"
    )
    # Well under Envoy's stream idle timeout.
    heartbeat_ms: int = setting(
        "RTASK_LOG_WATCH_HEARTBEAT_MS", 5_000, "`WatchTaskLogs`: a quiet stream sends an empty message this often"
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < 1:
                raise ConfigError(f"RTASK_LOG_WATCH_{f.name.upper()} must be at least 1")
        if self.page_lines > 1_000:
            raise ConfigError("RTASK_LOG_WATCH_PAGE_LINES must be at most 1000 (the message size limit)")


class LogTail:
    """The gateway's one blocking read over the logs that calls here wait on."""

    def __init__(self, redis: aioredis.Redis, block_ms: int) -> None:
        self.redis = redis
        self.block_ms = block_ms
        # task id -> (bell -> the sequence its call has read up to)
        self._armed: dict[str, dict[asyncio.Event, int]] = {}
        self._anyone = asyncio.Event()
        # WatchTaskLogs calls open on this gateway (plain integer, for a metrics exporter).
        self.calls_open = 0

    def arm(self, task_id: str, bell: asyncio.Event, after: int) -> None:
        """Ring `bell` once the task's log has a line above `after`."""
        self._armed.setdefault(task_id, {})[bell] = after
        self._anyone.set()

    def disarm(self, task_id: str, bell: asyncio.Event) -> None:
        bells = self._armed.get(task_id)
        if bells is not None:
            bells.pop(bell, None)
            if not bells:
                del self._armed[task_id]

    async def run(self) -> None:
        layout = key_layout(self.redis)
        while True:
            raise_if_cancelled()
            if not self._armed:
                self._anyone.clear()
                await self._anyone.wait()
                continue
            by_shard: dict[int, dict[str, str]] = {}
            for task_id, bells in self._armed.items():
                by_shard.setdefault(layout.log_shard(task_id), {})[task_id] = f"{min(bells.values())}-0"
            try:
                replies = await asyncio.gather(
                    *(self._read(layout, shard, positions) for shard, positions in by_shard.items())
                )
            except STORE_ERRORS as exc:
                log.warning("task logs unreadable", extra={"error": repr(exc)})
                await asyncio.sleep(RETRY_DELAY_S)
                continue
            for task_id in (t for grown in replies for t in grown):
                for bell in self._armed.pop(task_id, {}):
                    bell.set()

    async def _read(self, layout: keys.KeyLayout, shard: int, positions: Mapping[str, str]) -> list[str]:
        """The tasks of one shard whose logs grew past the positions (waiting up to block_ms for one)."""
        prefix = layout.task_log_prefix(shard).encode()
        streams = {layout.task_log_stream(task_id): after for task_id, after in positions.items()}
        reply: Any = await self.redis.xread(streams, count=1, block=self.block_ms)  # type: ignore[arg-type]
        return [key.removeprefix(prefix).decode() for key, _ in reply or ()]


class _Call:
    def __init__(
        self,
        pool: asyncpg.Pool,
        redis: aioredis.Redis,
        tail: LogTail,
        config: LogWatchConfig,
        owner_id: str,
        task_id: str,
        write: Write,
    ) -> None:
        self.pool = pool
        self.redis = redis
        self.tail = tail
        self.config = config
        self.owner_id = owner_id
        self.task_id = task_id
        self._write = write
        self.sent = 0
        self.spoke_at = time.monotonic()

    async def send(self, message: Message) -> None:
        await self._write(message)
        self.spoke_at = time.monotonic()

    async def send_stored(self) -> int:
        """Every stored line after `sent`, in pages; the gap before each page's lines is its `dropped`."""
        total = 0
        while True:
            lines = await task_logs.read_after(self.redis, self.task_id, self.sent, self.config.page_lines)
            raise_if_cancelled()
            if not lines:
                return total
            # Sequences only grow: the gaps before and between these lines add up to this.
            dropped = lines[-1].sequence - self.sent - len(lines)
            await self.send(Message(lines=lines, dropped=dropped))
            self.sent = lines[-1].sequence
            total += len(lines)
            if len(lines) < self.config.page_lines:
                return total

    async def finish(self) -> None:
        """The last message: lines dropped after the last one sent (the task's final number says how many)."""
        last = await task_logs.last_sequence(self.redis, self.task_id)
        await self.send(Message(finished=True, dropped=max(0, last - self.sent)))

    async def finished(self) -> bool:
        status = await self.pool.fetchval(_STATUS, self.task_id, self.owner_id)
        return status is None or status in TERMINAL

    async def run(self, follow: bool) -> None:
        if not follow:
            done = await self.finished()
            await self.send_stored()
            if done:
                await self.finish()
            return
        bell = asyncio.Event()
        checked_at = 0.0
        try:
            while True:
                # Finished is read before the lines: the lines of a finished task are all stored by then.
                now = time.monotonic()
                done = False
                if now - checked_at >= self.config.status_check_ms / 1000:
                    checked_at = now
                    done = await self.finished()
                read = await self.send_stored()
                if done:
                    await self.finish()
                    return
                if read:
                    continue
                bell.clear()
                self.tail.arm(self.task_id, bell, self.sent)
                timeout_s = min(self.config.status_check_ms, self.config.heartbeat_ms) / 1000
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(bell.wait(), timeout_s)
                self.tail.disarm(self.task_id, bell)
                if time.monotonic() - self.spoke_at >= self.config.heartbeat_ms / 1000:
                    await self.send(Message())
        finally:
            self.tail.disarm(self.task_id, bell)


async def watch_task_logs(
    pool: asyncpg.Pool,
    redis: aioredis.Redis,
    tail: LogTail,
    config: LogWatchConfig,
    owner_id: str,
    task_id: str,
    request: scheduler_pb2.WatchTaskLogsRequest,
    write: Write,
) -> None:
    """Write the messages of one call; the caller checked the request and that the task is the owner's."""
    call = _Call(pool, redis, tail, config, owner_id, task_id, write)
    call.sent = request.after_sequence
    tail.calls_open += 1
    try:
        await call.run(request.follow)
    finally:
        tail.calls_open -= 1
