"""Every Redis key, stream, group and channel the system uses, named in one place."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import lru_cache

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

PREFIX = "rt"

# Dispatch: one stream per task kind and priority level, each with one consumer group; the workers serving a
# kind are its competing consumers, so a task only ever reaches a worker that has its handler. The default
# level keeps the plain stream name; the others are named apart (a kind cannot make one name the other's).
DISPATCH_GROUP = "workers"
# SubmitTaskRequest.priority: 1 (lowest) to 5 (most urgent), 3 when unset.
PRIORITIES = (5, 4, 3, 2, 1)
DEFAULT_PRIORITY = 3


def dispatch_stream(kind: str, priority: int = DEFAULT_PRIORITY, surplus: bool = False) -> str:
    """A kind's stream of one priority level: its share lane, or its surplus lane (read after the share lane of
    the same level: work let through beyond its owner's fair cap while nobody else competes)."""
    lane = "-u" if surplus else ""
    if priority == DEFAULT_PRIORITY:
        return f"{PREFIX}:dispatch{lane}:{kind}"
    return f"{PREFIX}:dispatch-p{priority}{lane}:{kind}"


def dispatch_shard_stream(kind: str, priority: int, shard: int, surplus: bool = False) -> str:
    """Shard `shard` (1 and up) of a kind's streams, when a kind is split (KeyLayout.dispatch_shards); shard 0 is
    dispatch_stream() itself, so a deployment that starts sharding keeps reading the entries it holds."""
    lane = "-u" if surplus else ""
    if priority == DEFAULT_PRIORITY:
        return f"{PREFIX}:dispatch-s{shard}{lane}:{kind}"
    return f"{PREFIX}:dispatch-p{priority}-s{shard}{lane}:{kind}"


# Every dispatch stream, for key patterns (ACLs): the default level's and the other levels', and their shards',
# in either lane.
DISPATCH_STREAM_PATTERNS = (
    dispatch_stream("*"),
    f"{PREFIX}:dispatch-p?:*",
    f"{PREFIX}:dispatch-s*:*",
    f"{PREFIX}:dispatch-p?-s*:*",
    dispatch_stream("*", surplus=True),
    f"{PREFIX}:dispatch-p?-u:*",
)


# Commands from gateways to whichever scheduler holds a worker's Connect stream.
COMMAND_CHANNEL = f"{PREFIX}:commands"

# Worker pool registry: hash worker_id -> JSON description, refreshed by heartbeats.
WORKERS_HASH = f"{PREFIX}:workers"
# What each worker said it holds at its latest heartbeat, and when (written by schedulers; read on takeovers).
WORKERS_HOLDING_HASH = f"{PREFIX}:workers:holding"
# Workers told to drain (OperatorService.DrainWorker) or draining on their own: hash worker_id -> JSON
# {"deadline": epoch s}. Kept after the worker's stream ends, so a drain survives a reconnect.
WORKERS_DRAINING_HASH = f"{PREFIX}:workers:draining"
# Pool changes (joined, left, busy slots) for watchers.
WORKERS_EVENTS_CHANNEL = f"{PREFIX}:workers:changed"


def drain_reply_channel(token: str) -> str:
    """Where the scheduler holding a worker's stream confirms a drain command (token: the gateway's own)."""
    return f"{COMMAND_CHANNEL}:drained:{token}"


def owner_events_stream(owner_id: str) -> str:
    """Per-owner event stream: every change of the owner's tasks, read by WatchTasks."""
    return f"{PREFIX}:events:{owner_id}"


OWNER_EVENTS_PATTERN = f"{PREFIX}:events:*"

# Every owner's changes again, in one stream: each gateway tails it with a single blocking read.
EVENTS_FEED_STREAM = f"{PREFIX}:feed:events"
# Sequence number of the feed's entries, so a reader notices entries trimmed before it read them.
EVENTS_FEED_SEQ = f"{PREFIX}:feed:seq"


def watch_seats(owner_id: str) -> str:
    """Sorted set of the owner's open WatchTasks streams (seat id -> expiry, ms), across gateways."""
    return f"{PREFIX}:watchers:{owner_id}"


def rate_window(kind: str) -> str:
    """Sorted set of a rate-limited kind's recent starts (member: a sequence number, score: when, in µs), the
    sliding window of services.core.rate_limits; one hash tag with its sequence, so one script may use both."""
    return f"{PREFIX}:rate:{{{kind}}}"


def rate_sequence(kind: str) -> str:
    """Counter numbering a kind's granted starts; it never expires, so no number is granted twice (a late give-back
    names its own start only)."""
    return f"{PREFIX}:rate:{{{kind}}}:seq"


# Lease of the scheduler that exports the cluster-wide gauges: a hash {holder: id} that expires by itself.
METRICS_EXPORTER_LEASE = f"{PREFIX}:metrics:exporter"

# Dispatch stream entry fields.
FIELD_TASK_ID = "task_id"
FIELD_DISPATCH_ID = "dispatch_id"
FIELD_KIND = "kind"
# The W3C traceparent of the submission (present only when tracing was on): see services.core.tracing.
FIELD_TRACE_PARENT = "traceparent"


# Task logs (services/core/task_logs.py): one stream per task whose entry ids are the lines' sequence numbers,
# a hash per task with its last sequence number and its stored bytes, and, for the bounds across all tasks,
# an index (sorted set task id -> time of its last line, ms) and the total bytes stored.
def task_log_stream(task_id: str) -> str:
    return f"{PREFIX}:logs:{task_id}"


def task_log_meta(task_id: str) -> str:
    return f"{PREFIX}:logmeta:{task_id}"


TASK_LOGS_INDEX = f"{PREFIX}:logindex"
TASK_LOGS_BYTES = f"{PREFIX}:logbytes"


def log_watch_seats(owner_id: str) -> str:
    """Sorted set of the owner's open WatchTaskLogs streams (seat id -> expiry, ms), across gateways."""
    return f"{PREFIX}:logwatchers:{owner_id}"


# -- where keys live: one server, or a Valkey/Redis Cluster ------------------------------------------------------
# On a cluster every Lua script, multi-key command and blocking read must touch keys of one hash slot. The names
# above are those of a single server (kept as they are, so a deployment upgraded in place keeps its data); a
# cluster uses the names of CLUSTER below, which put the keys that go together under one {hash tag}:
# - dispatch: the five priority streams of a kind, in both lanes, share the tag {<kind>}, so a worker's blocking
#   read covers a kind's levels in one command, and different kinds spread over the nodes. A kind may be split into
#   dispatch_shards shards (RTASK_DISPATCH_SHARDS; a task's shard is a stable hash of its id): shard 0 keeps the
#   names above, shard s > 0 has its own streams under a tag of its own, {<kind>~<n>}, each shard's five levels
#   under one tag. n is the first number that puts the shard's slot in an N-th of the slot space no other shard
#   of the kind uses, so on a cluster whose primaries hold equal runs of slots (as `--cluster create` makes
#   them) N shards over N primaries land one on each. One server uses the same streams, untagged;
# - change events: the feed is split into FEED_SHARDS streams, tag {e<n>}; an owner's stream carries the tag of
#   its shard (a stable hash of the owner id), so the one script that appends to both stays on one slot;
# - task logs: the index and byte count are split into LOG_SHARDS, tag {l<n>}, each with the logs of its tasks;
#   the store's bounds (total bytes, tasks) are split evenly between the shards.
# Everything else is one key per command (or tagged already, as the rate windows), on either layout.
FEED_SHARDS = 8
LOG_SHARDS = 8


def _shard(ident: str, shards: int) -> int:
    """A stable shard of an id (the same in every process and version): CRC-32 of its text."""
    return zlib.crc32(ident.encode()) % shards


def _slot_part(slot: int, parts: int) -> int:
    return slot * parts // REDIS_CLUSTER_HASH_SLOTS


@lru_cache(maxsize=4096)
def _shard_tags(kind: str, shards: int) -> tuple[str, ...]:
    """The hash tag of each of a kind's shards on a cluster (see above): shard 0's is the kind, each other's the
    kind and the first number (from 1) whose slot falls in a part of the slot space not yet taken."""
    tags = [kind]
    taken = {_slot_part(key_slot(kind.encode()), shards)}
    n = 0
    while len(tags) < shards:
        n += 1
        tag = f"{kind}~{n}"
        part = _slot_part(key_slot(tag.encode()), shards)
        if part not in taken:
            taken.add(part)
            tags.append(tag)
    return tuple(tags)


@dataclass(frozen=True)
class KeyLayout:
    """The names of the keys that differ between a single server and a cluster (see above), and the number of
    shards of each kind's dispatch streams (the same in every gateway, scheduler and worker)."""

    cluster: bool = False
    dispatch_shards: int = 1

    @property
    def feed_shards(self) -> int:
        return FEED_SHARDS if self.cluster else 1

    @property
    def log_shards(self) -> int:
        return LOG_SHARDS if self.cluster else 1

    def dispatch_shard(self, task_id: str) -> int:
        """Which of its kind's shards carries a task's entries: a stable hash of its id, so every process agrees
        and a batch spreads evenly."""
        return _shard(task_id, self.dispatch_shards) if self.dispatch_shards > 1 else 0

    def dispatch_stream(
        self, kind: str, priority: int = DEFAULT_PRIORITY, shard: int = 0, surplus: bool = False
    ) -> str:
        """A stream of a kind: its priority level, shard and lane (both lanes of a shard under one hash tag)."""
        if shard == 0:
            return dispatch_stream(f"{{{kind}}}" if self.cluster else kind, priority, surplus)
        if not 0 < shard < self.dispatch_shards:
            raise ValueError(f"dispatch shard {shard} out of range (RTASK_DISPATCH_SHARDS={self.dispatch_shards})")
        name = f"{{{_shard_tags(kind, self.dispatch_shards)[shard]}}}" if self.cluster else kind
        return dispatch_shard_stream(name, priority, shard, surplus)

    def feed_shard(self, owner_id: str) -> int:
        return _shard(owner_id, FEED_SHARDS) if self.cluster else 0

    def feed_stream(self, shard: int) -> str:
        return f"{PREFIX}:feed:{{e{shard}}}:events" if self.cluster else EVENTS_FEED_STREAM

    def feed_sequence(self, shard: int) -> str:
        return f"{PREFIX}:feed:{{e{shard}}}:seq" if self.cluster else EVENTS_FEED_SEQ

    def owner_events_stream(self, owner_id: str) -> str:
        if not self.cluster:
            return owner_events_stream(owner_id)
        return f"{PREFIX}:events:{{e{self.feed_shard(owner_id)}}}:{owner_id}"

    def log_shard(self, task_id: str) -> int:
        return _shard(task_id, LOG_SHARDS) if self.cluster else 0

    def _log_tag(self, shard: int) -> str:
        return f"{{l{shard}}}:" if self.cluster else ""

    def task_log_prefix(self, shard: int) -> str:
        """The stream names of a shard's task logs are this prefix and the task id."""
        return f"{PREFIX}:logs:{self._log_tag(shard)}"

    def task_meta_prefix(self, shard: int) -> str:
        return f"{PREFIX}:logmeta:{self._log_tag(shard)}"

    def task_log_stream(self, task_id: str) -> str:
        return self.task_log_prefix(self.log_shard(task_id)) + task_id

    def task_log_meta(self, task_id: str) -> str:
        return self.task_meta_prefix(self.log_shard(task_id)) + task_id

    def task_logs_index(self, shard: int) -> str:
        return f"{PREFIX}:logindex:{{l{shard}}}" if self.cluster else TASK_LOGS_INDEX

    def task_logs_bytes(self, shard: int) -> str:
        return f"{PREFIX}:logbytes:{{l{shard}}}" if self.cluster else TASK_LOGS_BYTES


SINGLE = KeyLayout()
CLUSTER = KeyLayout(cluster=True)
# RTASK_DISPATCH_SHARDS accepts 1 to this many (each shard is one more blocking read per kind in every worker).
MAX_DISPATCH_SHARDS = 64
