"""Task change events: appended to Redis after every committed transition, read by WatchTasks.

Each change is written twice, atomically, by one Lua script:
- to the owner's stream (keys.owner_events_stream), the history a watcher resumes from; its entry ids are
  the watchers' resume positions. Fields: `task` (serialized resilienttask.v1.Task as it now is, as a
  summary: no payload, no result, strings cut to bounds; see services.core.task_summary), `prev`
  (the previous status number, 0 for a new task), `deleted` ("1" when the task was removed) and `after`
  (the id of the owner's previous entry, "0-0" for the first), which chains the owner's history so a reader
  can tell a contiguous continuation from a gap (trimmed history, a lagging feed) without guessing;
- to the global feed (keys.EVENTS_FEED_STREAM; on a cluster, the feed shard of the owner: see
  keys.KeyLayout), which each gateway tails with one blocking read (per shard) for all its watchers. It
  carries the same fields plus `owner`, `id` (the owner-stream entry id) and `seq` (a counter that grows by
  one per entry, so a reader notices feed entries it never saw).

Both streams are capped by length (XADD MAXLEN), and an entry's size is bounded (MAX_ENTRY_BYTES), so each
has a bound in bytes: the README ("Change events and their size") states the figures.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from resilienttask.v1 import task_pb2
from services.core.redis_client import key_layout
from services.core.task_summary import MAX_SUMMARY_BYTES, summarize

# Per-owner history kept for resuming watchers; older entries are trimmed. Trimming is approximate ("~", whole
# radix-tree nodes at a time, far cheaper than exact): a stream holds at most its cap plus one node
# (stream-node-max-entries, 100 by default) of entries.
EVENTS_MAXLEN = 10_000
# The feed is only read live; a reader that falls this far behind resynchronises from the owner streams.
FEED_MAXLEN = 20_000
# The largest feed entry (the larger of the two): the task summary plus the other fields, names included:
# owner (a UUID), id and after (stream ids, at most 41 characters each), seq (at most 20 digits), prev, deleted.
MAX_ENTRY_BYTES = MAX_SUMMARY_BYTES + 200
# Changes per script call: one call blocks the server while it runs, so huge batches are split.
PUBLISH_CHUNK = 500
# The id before any entry: the `after` of an owner's first event, and the position of an empty history.
ORIGIN = "0-0"

# KEYS: feed, feed seq, then one owner stream per change.
# ARGV: owner maxlen, feed maxlen, then (owner id, task, prev, deleted) per change.
_PUBLISH_LUA = """
local ids = {}
for i = 3, #KEYS do
  local base = 2 + (i - 3) * 4
  local owner, task, prev, deleted = ARGV[base + 1], ARGV[base + 2], ARGV[base + 3], ARGV[base + 4]
  local last = redis.call('XREVRANGE', KEYS[i], '+', '-', 'COUNT', 1)
  local after = '0-0'
  if #last > 0 then after = last[1][1] end
  local id = redis.call('XADD', KEYS[i], 'MAXLEN', '~', ARGV[1], '*',
    'task', task, 'prev', prev, 'deleted', deleted, 'after', after)
  local seq = redis.call('INCR', KEYS[2])
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'owner', owner, 'id', id, 'after', after,
    'seq', seq, 'task', task, 'prev', prev, 'deleted', deleted)
  ids[#ids + 1] = id
end
return ids
"""

StreamId = tuple[int, int]


@dataclass(frozen=True)
class TaskChange:
    """One committed change of one task; `task` is always its summary (a full task given is summarized)."""

    owner_id: str
    task: task_pb2.Task
    previous_status: int
    deleted: bool = False

    def __post_init__(self) -> None:
        if not self.task.summary:
            object.__setattr__(self, "task", summarize(self.task))


@dataclass(frozen=True)
class StoredEvent:
    """One change as it sits in its owner's stream: where it is, and which entry it follows."""

    entry_id: str
    after: str
    change: TaskChange

    @property
    def position(self) -> StreamId:
        return parse_stream_id(self.entry_id)


def parse_stream_id(entry_id: str) -> StreamId:
    """A stream id ("<ms>-<seq>") as a comparable pair; ValueError when it is not one."""
    ms, sep, seq = entry_id.partition("-")
    if not sep or not ms.isdigit() or not seq.isdigit():
        raise ValueError(f"not a stream id: {entry_id!r}")
    return int(ms), int(seq)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _change(owner_id: str, fields: dict[bytes, bytes]) -> TaskChange:
    task = task_pb2.Task()
    task.ParseFromString(fields[b"task"])
    return TaskChange(owner_id, task, int(fields.get(b"prev", b"0")), fields.get(b"deleted") == b"1")


def decode_owner_entry(owner_id: str, entry_id: bytes | str, fields: dict[bytes, bytes]) -> StoredEvent:
    """An entry of keys.owner_events_stream(owner_id); a missing `after` reads as an unknown predecessor."""
    return StoredEvent(_text(entry_id), _text(fields.get(b"after", b"")), _change(owner_id, fields))


def feed_owner(fields: dict[bytes, bytes]) -> str:
    """The owner of a feed entry, read without decoding the task (most entries concern nobody watching)."""
    return fields[b"owner"].decode()


def feed_seq(fields: dict[bytes, bytes]) -> int:
    return int(fields[b"seq"])


def decode_feed_entry(fields: dict[bytes, bytes]) -> StoredEvent:
    """A feed entry as the owner-stream event it mirrors."""
    return StoredEvent(fields[b"id"].decode(), fields[b"after"].decode(), _change(feed_owner(fields), fields))


def _args(change: TaskChange) -> list[bytes | str]:
    return [
        change.owner_id,
        change.task.SerializeToString(),
        str(change.previous_status),
        "1" if change.deleted else "0",
    ]


def queue_changes(pipe: Pipeline, changes: Sequence[TaskChange]) -> list[list[TaskChange]]:
    """Add the appends of every change to a pipeline (one script call per feed shard and chunk), to run with its
    other commands; returns the changes of each call, in the order of their replies.

    One server has one feed; a cluster has keys.FEED_SHARDS, each on the slot of its owners' streams, so that a
    script touches one slot. An owner's changes all go to one shard, in the order given.

    EVAL with the script's text rather than EVALSHA: the server caches the compiled script either way, and
    EVAL needs neither the SCRIPT EXISTS round trip a registered script costs before every pipeline nor a
    NOSCRIPT recovery after a server restart.
    """
    layout = key_layout(pipe)
    by_shard: dict[int, list[TaskChange]] = {}
    for change in changes:
        by_shard.setdefault(layout.feed_shard(change.owner_id), []).append(change)
    calls: list[list[TaskChange]] = []
    for shard, shard_changes in by_shard.items():
        for start in range(0, len(shard_changes), PUBLISH_CHUNK):
            chunk = shard_changes[start : start + PUBLISH_CHUNK]
            stream_keys = [
                layout.feed_stream(shard),
                layout.feed_sequence(shard),
                *(layout.owner_events_stream(c.owner_id) for c in chunk),
            ]
            args = [EVENTS_MAXLEN, FEED_MAXLEN, *(arg for c in chunk for arg in _args(c))]
            pipe.eval(_PUBLISH_LUA, len(stream_keys), *stream_keys, *args)
            calls.append(chunk)
    return calls


async def publish_changes(redis: aioredis.Redis, changes: Iterable[TaskChange]) -> None:
    """Append every change to its owner's stream and to the feed, in one pipelined round trip."""
    batch = list(changes)
    if not batch:
        return
    async with redis.pipeline(transaction=False) as pipe:
        queue_changes(pipe, batch)
        await pipe.execute()
