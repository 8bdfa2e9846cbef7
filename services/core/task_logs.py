"""The store of what handlers logged: written by the schedulers, read by every gateway (WatchTaskLogs).

Layout (keys named in services.core.keys):
- one Redis stream per task; an entry's id is `<sequence>-0`, so the id is the line's sequence number and a
  reader resumes with XRANGE/XREAD from it. Sequence numbers grow by one per line stored and also by every line
  dropped before it (the rate bounds of worker and scheduler), so a gap says how many are missing;
- one hash per task: its last sequence number (lines dropped after the last stored line count too) and the bytes
  it holds;
- an index (sorted set: task id -> time of its last line, ms) and the total bytes of all tasks' logs.

Bounds, all applied in the one script that appends, so they hold after every write:
- per task: the newest max_lines_per_task lines (exact trimming; older lines are dropped first);
- in total: max_total_bytes (text plus a fixed overhead per line) and max_tasks logs; beyond either, whole logs
  are deleted, least recently written first (a finished task's log before a running one's);
- in time: a log not written for retention_s is deleted (tasks run at most 24 h, so this is counted from about
  when the task finished). Expired logs go at the next write, or at the schedulers' periodic sweep.
Deleted logs (for space or age) take their numbering with them: they are the oldest, of long finished tasks.
No maxmemory policy is relied on: the dispatch streams share the server, and must never be evicted.

On a cluster the store is split into keys.LOG_SHARDS shards (keys.KeyLayout), each a slot of its own with its
index, its byte count and the logs of its tasks, so that the script touches one slot; the bounds in total
(bytes, tasks) are then split evenly between the shards.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import redis.asyncio as aioredis

from resilienttask.v1 import scheduler_pb2
from services.core import keys
from services.core.redis_client import key_layout
from services.core.settings import ConfigError, setting

# A line's text is cut to this many bytes of UTF-8 (on a character boundary).
MAX_LINE_BYTES = 4096
# Bytes counted per line on top of its text and level: the entry's id and field names in the stream.
LINE_OVERHEAD_BYTES = 64
# Lines written by one script call: a call blocks the server while it runs, so big flushes are split.
APPEND_CHUNK_LINES = 2_000
# Logs deleted for age per call (the rest go at the next call).
EXPIRE_PER_CALL = 100
# Level names are short; anything longer is cut.
MAX_LEVEL_CHARS = 16


@dataclass(frozen=True)
class TaskLogConfig:
    """Bounds of the log store (RTASK_LOGS_* variables)."""

    max_lines_per_task: int = setting("RTASK_LOGS_MAX_LINES_PER_TASK", 10_000, "the log store's lines per task")
    # Text + level + LINE_OVERHEAD_BYTES per line, over every task: about what the store takes in memory.
    max_total_bytes: int = setting(
        "RTASK_LOGS_MAX_TOTAL_BYTES",
        256 * 1024 * 1024,
        "the log store's bytes in total; the least recently written logs are deleted first",
    )
    max_tasks: int = setting("RTASK_LOGS_MAX_TASKS", 100_000, "tasks with a stored log")
    retention_s: int = setting("RTASK_LOGS_RETENTION_S", 7 * 24 * 3600, "a log not written for this long is deleted")

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < 1:
                raise ConfigError(f"RTASK_LOGS_{f.name.upper()} must be at least 1")


def cut_text(text: str, limit: int = MAX_LINE_BYTES) -> str:
    """text in at most `limit` bytes of UTF-8, cut on a character boundary."""
    if len(text) * 4 <= limit:
        return text
    raw = text.encode("utf-8", "replace")
    if len(raw) <= limit:
        return text
    return raw[:limit].decode("utf-8", "ignore")


@dataclass
class AttemptLines:
    """Lines of one attempt to append: (dropped_before, at_ms, stream, level, text) each, oldest first."""

    task_id: str
    attempt: int
    lines: list[tuple[int, int, int, str, str]] = field(default_factory=list)
    dropped_after: int = 0


# KEYS: index, total bytes, then (stream, meta) per task.
# ARGV: now ms, max lines per task, max total bytes, max tasks, retention ms, stream prefix, meta prefix, overhead,
# expire per call; then per task: task id, attempt, line count, dropped after; then per line: dropped before,
# at ms, stream, level, text.
_APPEND = """
local now, per_task, max_bytes = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local max_tasks, retention = tonumber(ARGV[4]), tonumber(ARGV[5])
local stream_prefix, meta_prefix, overhead = ARGV[6], ARGV[7], tonumber(ARGV[8])
-- The services' Redis user may not DEL: a log is emptied (its memory freed now), its hash loses its fields (an
-- empty hash is removed) and the empty stream expires a millisecond later.
local function drop(task)
  local stream, meta = stream_prefix .. task, meta_prefix .. task
  local b = tonumber(redis.call('HGET', meta, 'bytes') or '0')
  redis.call('XTRIM', stream, 'MAXLEN', 0)
  redis.call('PEXPIRE', stream, 1)
  redis.call('HDEL', meta, 'seq', 'bytes')
  redis.call('ZREM', KEYS[1], task)
  redis.call('INCRBY', KEYS[2], -b)
end
local a = 10
for i = 3, #KEYS, 2 do
  local stream, meta = KEYS[i], KEYS[i + 1]
  local task, attempt, n, after = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  a = a + 4
  local seq = tonumber(redis.call('HGET', meta, 'seq') or '0')
  local added = 0
  for j = 1, n do
    seq = seq + tonumber(ARGV[a]) + 1
    redis.call('XADD', stream, seq .. '-0', 'a', ARGV[a + 1], 'n', attempt, 's', ARGV[a + 2],
      'l', ARGV[a + 3], 't', ARGV[a + 4])
    added = added + #ARGV[a + 3] + #ARGV[a + 4] + overhead
    a = a + 5
  end
  seq = seq + after
  local over = redis.call('XLEN', stream) - per_task
  if over > 0 then
    for _, e in ipairs(redis.call('XRANGE', stream, '-', '+', 'COUNT', over)) do
      added = added - (#e[2][8] + #e[2][10] + overhead)
    end
    redis.call('XTRIM', stream, 'MAXLEN', per_task)
  end
  redis.call('HSET', meta, 'seq', seq)
  redis.call('HINCRBY', meta, 'bytes', added)
  redis.call('INCRBY', KEYS[2], added)
  redis.call('ZADD', KEYS[1], now, task)
end
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - retention, 'LIMIT', 0, tonumber(ARGV[9]))
for _, task in ipairs(expired) do drop(task) end
local evicted = 0
while redis.call('INCRBY', KEYS[2], 0) > max_bytes or redis.call('ZCARD', KEYS[1]) > max_tasks do
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0)
  if #oldest == 0 then break end
  drop(oldest[1])
  evicted = evicted + 1
end
return {evicted, #expired}
"""


@dataclass
class AppendCounts:
    """What appending did besides storing lines: logs deleted for space and for age."""

    evicted: int = 0
    expired: int = 0


async def append(
    redis: aioredis.Redis, batches: Sequence[AttemptLines], config: TaskLogConfig, now_ms: int | None = None
) -> AppendCounts:
    """Store the lines (numbered in arrival order per task) and apply every bound; an empty list only expires
    (in every shard)."""
    counts = AppendCounts()
    now = int(time.time() * 1000) if now_ms is None else now_ms
    layout = key_layout(redis)
    by_shard: dict[int, list[AttemptLines]] = {shard: [] for shard in range(layout.log_shards)} if not batches else {}
    for batch in batches:
        by_shard.setdefault(layout.log_shard(batch.task_id), []).append(batch)
    for shard, shard_batches in by_shard.items():
        chunk: list[AttemptLines] = []
        size = 0
        for batch in shard_batches:
            chunk.append(batch)
            size += len(batch.lines) + 1
            if size >= APPEND_CHUNK_LINES:
                await _append_chunk(redis, layout, shard, chunk, config, now, counts)
                chunk, size = [], 0
        if chunk or not shard_batches:
            await _append_chunk(redis, layout, shard, chunk, config, now, counts)
    return counts


async def _append_chunk(
    redis: aioredis.Redis,
    layout: keys.KeyLayout,
    shard: int,
    chunk: Sequence[AttemptLines],
    config: TaskLogConfig,
    now: int,
    counts: AppendCounts,
) -> None:
    script_keys: list[str] = [layout.task_logs_index(shard), layout.task_logs_bytes(shard)]
    args: list[str | int] = [
        now,
        config.max_lines_per_task,
        max(1, config.max_total_bytes // layout.log_shards),
        max(1, config.max_tasks // layout.log_shards),
        config.retention_s * 1000,
        layout.task_log_prefix(shard),
        layout.task_meta_prefix(shard),
        LINE_OVERHEAD_BYTES,
        EXPIRE_PER_CALL,
    ]
    for batch in chunk:
        script_keys += [layout.task_log_stream(batch.task_id), layout.task_log_meta(batch.task_id)]
        args += [batch.task_id, batch.attempt, len(batch.lines), batch.dropped_after]
        for dropped_before, at_ms, stream, level, text in batch.lines:
            args += [dropped_before, at_ms, stream, level, text]
    evicted, expired = await redis.eval(_APPEND, len(script_keys), *script_keys, *args)  # type: ignore[misc]
    counts.evicted += int(evicted)
    counts.expired += int(expired)


def _line(entry_id: bytes, values: Mapping[bytes, bytes]) -> scheduler_pb2.LogLine:
    line = scheduler_pb2.LogLine(
        sequence=int(entry_id.split(b"-", 1)[0]),
        attempt=int(values.get(b"n", b"0")),
        stream=int(values.get(b"s", b"0")),  # type: ignore[arg-type]
        level=values.get(b"l", b"").decode(),
        text=values.get(b"t", b"").decode("utf-8", "replace"),
    )
    line.at.FromMilliseconds(int(values.get(b"a", b"0")))
    return line


async def read_after(redis: aioredis.Redis, task_id: str, after: int, count: int) -> list[scheduler_pb2.LogLine]:
    """Up to `count` stored lines of the task with a sequence above `after`, oldest first."""
    entries: Any = await redis.xrange(key_layout(redis).task_log_stream(task_id), f"{after + 1}-0", "+", count=count)
    return [_line(entry_id, values) for entry_id, values in entries]


async def last_sequence(redis: aioredis.Redis, task_id: str) -> int:
    """The task's last sequence number (dropped lines included); 0 when it has no log."""
    value = await redis.hget(key_layout(redis).task_log_meta(task_id), "seq")  # type: ignore[misc]
    return int(value) if value else 0
