"""Every Redis key, stream, group and channel the system uses, named in one place."""

from __future__ import annotations

PREFIX = "rt"

# Dispatch: one stream per task kind and priority level, each with one consumer group; the workers serving a
# kind are its competing consumers, so a task only ever reaches a worker that has its handler. The default
# level keeps the plain stream name; the others are named apart (a kind cannot make one name the other's).
DISPATCH_GROUP = "workers"
# SubmitTaskRequest.priority: 1 (lowest) to 5 (most urgent), 3 when unset.
PRIORITIES = (5, 4, 3, 2, 1)
DEFAULT_PRIORITY = 3


def dispatch_stream(kind: str, priority: int = DEFAULT_PRIORITY) -> str:
    if priority == DEFAULT_PRIORITY:
        return f"{PREFIX}:dispatch:{kind}"
    return f"{PREFIX}:dispatch-p{priority}:{kind}"


# Every dispatch stream, for key patterns (ACLs): the default level's and the other levels'.
DISPATCH_STREAM_PATTERNS = (dispatch_stream("*"), f"{PREFIX}:dispatch-p?:*")


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
