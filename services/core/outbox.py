"""What happens after a commit: dispatch entries, change events and worker commands go to Redis.

Failures here never undo the commit and never fail the caller: a task left unpublished is found by the
scheduler's sweeper, change events Redis refused are parked in PostgreSQL until the scheduler appends
them, and a missed cancel push is repeated on the worker's next heartbeat.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import asyncpg
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from resilienttask.v1 import task_pb2
from services.core import channels, commands, keys, task_store
from services.core.dispatch import DispatchEntry, publish, published_refs, queue_entries, row_entry
from services.core.errors import DATABASE_ERRORS
from services.core.events import TaskChange, publish_changes, queue_changes
from services.core.transitions.rules import RunningRef

log = logging.getLogger(__name__)


async def dispatch_rows(pool: asyncpg.Pool, redis: aioredis.Redis, rows: Sequence[asyncpg.Record]) -> bool:
    """XADD the rows' current dispatch, then record the entry ids; False when Redis refused."""
    if not rows:
        return True
    entries = [row_entry(r) for r in rows]
    try:
        entry_ids = await publish(redis, entries)
    except (RedisError, OSError) as exc:
        log.warning("dispatch deferred to the sweeper", extra={"tasks": len(entries), "error": repr(exc)})
        return False
    await _write_marks(pool, list(zip(entries, entry_ids, strict=True)))
    return True


async def emit_and_dispatch(
    pool: asyncpg.Pool, redis: aioredis.Redis, rows: Sequence[asyncpg.Record], changes: Sequence[TaskChange]
) -> None:
    """The change events, then the dispatch entries, in one round trip: watchers hear of a task before any
    worker can start it, and the task reaches a worker without waiting for a second call."""
    entries = [row_entry(r) for r in rows]
    try:
        async with redis.pipeline(transaction=False) as pipe:
            calls = queue_changes(pipe, changes)
            first_entry_reply = len(pipe)
            ordered = queue_entries(pipe, entries)
            # Each command's own outcome: Redis may refuse one and run the next (a full server refuses writes
            # with OOM once it is over its limit), and what was written must not be parked and written twice.
            replies = await pipe.execute(raise_on_error=False)
    except (RedisError, OSError) as exc:
        log.warning("dispatch deferred to the sweeper, events parked", extra={"tasks": len(rows), "error": repr(exc)})
        await _park_or_log(pool, changes)
        return
    await _park_refused(pool, calls, replies[:first_entry_reply])
    published = published_refs(ordered, replies[first_entry_reply:])
    if len(published) < len(ordered):
        log.warning("dispatch deferred to the sweeper", extra={"tasks": len(ordered) - len(published)})
    # Off the reply path, and late: until it lands, only the sweeper's grace period stands between the task
    # and a second publication, which fencing makes harmless anyway.
    _mark_later(pool, [entry for entry, _ in published], [ref for _, ref in published])


# How long a fresh submission's publication mark waits: a task a worker starts within it is never marked
# (its start is all the sweeper needs), which spares a row version and its index entries per task, and the
# marks of every submission made meanwhile go in one statement. Well within the sweeper's grace
# (transitions.rules.PUBLISH_GRACE_S), so the mark still lands before the sweeper looks.
MARK_DELAY_S = 1.0

# Marks waiting for their statement, per pool, and strong references to the tasks that will write them.
_pending_marks: dict[asyncpg.Pool, list[tuple[DispatchEntry, str]]] = {}
_in_flight: set[asyncio.Task[None]] = set()


def _mark_later(pool: asyncpg.Pool, entries: Sequence[DispatchEntry], refs: Sequence[str]) -> None:
    pending = _pending_marks.get(pool)
    if pending is None:
        pending = _pending_marks[pool] = []
        marking = asyncio.create_task(_mark_published(pool, pending))
        _in_flight.add(marking)
        marking.add_done_callback(_in_flight.discard)
    pending.extend(zip(entries, refs, strict=True))


async def _mark_published(pool: asyncpg.Pool, pending: list[tuple[DispatchEntry, str]]) -> None:
    try:
        await asyncio.sleep(MARK_DELAY_S)
    finally:
        # Unless flush_marks took the batch meanwhile, it is this task's; cancelled, it is dropped (the sweeper
        # publishes those tasks again) and the next submission starts a new batch.
        mine = _pending_marks.get(pool) is pending
        if mine:
            del _pending_marks[pool]
    if mine:
        await _write_marks(pool, pending)


async def flush_marks(pool: asyncpg.Pool) -> None:
    """At shutdown: write the marks still waiting, rather than leave those tasks to the sweeper."""
    pending = _pending_marks.pop(pool, None)
    if pending:
        await _write_marks(pool, pending)


async def _write_marks(pool: asyncpg.Pool, pending: Sequence[tuple[DispatchEntry, str]]) -> None:
    entries = [entry for entry, _ in pending]
    try:
        await task_store.mark_published(
            pool, [e.task_id for e in entries], [e.dispatch_id for e in entries], [ref for _, ref in pending]
        )
    except DATABASE_ERRORS as exc:
        # The entries are in the stream; the sweeper may publish them again, which fencing makes harmless.
        log.warning("could not record publication", extra={"error": repr(exc)})


async def emit(redis: aioredis.Redis, changes: Sequence[TaskChange], pool: asyncpg.Pool) -> None:
    if not changes:
        return
    try:
        await publish_changes(redis, changes)
    except (RedisError, OSError) as exc:
        log.warning("change events parked until Redis is back", extra={"events": len(changes), "error": repr(exc)})
        await _park_or_log(pool, changes)


async def _park_or_log(pool: asyncpg.Pool, changes: Sequence[TaskChange]) -> None:
    """Redis refused the events: keep them in PostgreSQL for the scheduler to append later."""
    try:
        await park_events(pool, changes)
    except DATABASE_ERRORS as exc:
        log.error("change events lost", extra={"events": len(changes), "error": repr(exc)})


async def park_events(pool: asyncpg.Pool, changes: Sequence[TaskChange]) -> None:
    if not changes:
        return
    await pool.execute(
        "INSERT INTO parked_events (owner_id, task, previous_status, deleted) "
        "SELECT * FROM unnest($1::uuid[], $2::bytea[], $3::smallint[], $4::bool[])",
        [c.owner_id for c in changes],
        [c.task.SerializeToString() for c in changes],
        [c.previous_status for c in changes],
        [c.deleted for c in changes],
    )


async def append_parked_events(pool: asyncpg.Pool, redis: aioredis.Redis, limit: int = 500) -> int:
    """Append parked events to Redis in the order they were parked; they leave the table only once appended."""
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            "SELECT id, owner_id, task, previous_status, deleted FROM parked_events "
            "ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
            limit,
        )
        if not rows:
            return 0
        changes = []
        for row in rows:
            task = task_pb2.Task()
            task.ParseFromString(row["task"])
            changes.append(TaskChange(str(row["owner_id"]), task, row["previous_status"], row["deleted"]))
        await publish_changes(redis, changes)
        await conn.execute("DELETE FROM parked_events WHERE id = ANY($1::bigint[])", [r["id"] for r in rows])
    return len(rows)


async def push_stop(redis: aioredis.Redis, refs: Sequence[RunningRef], reason: commands.StopReason) -> None:
    """Ask whichever scheduler holds each worker's stream to stop the task there."""
    if not refs:
        return
    try:
        async with redis.pipeline(transaction=False) as pipe:
            _queue_stops(pipe, refs, reason)
            await pipe.execute()
    except (RedisError, OSError) as exc:
        log.warning("stop push deferred to the next heartbeat", extra={"error": repr(exc)})


async def stop_and_emit(
    pool: asyncpg.Pool,
    redis: aioredis.Redis,
    refs: Sequence[RunningRef],
    reason: commands.StopReason,
    changes: Sequence[TaskChange],
) -> None:
    """push_stop and emit in one round trip, the stops first: they are what the caller is waiting for."""
    try:
        async with redis.pipeline(transaction=False) as pipe:
            _queue_stops(pipe, refs, reason)
            calls = queue_changes(pipe, changes)
            replies = await pipe.execute(raise_on_error=False)
    except (RedisError, OSError) as exc:
        log.warning("stop push deferred to the next heartbeat, events parked", extra={"error": repr(exc)})
        await _park_or_log(pool, changes)
        return
    if any(isinstance(reply, BaseException) for reply in replies[: len(refs)]):
        log.warning("stop push deferred to the next heartbeat", extra={"tasks": len(refs)})
    await _park_refused(pool, calls, replies[len(refs) :])


async def _park_refused(pool: asyncpg.Pool, calls: Sequence[Sequence[TaskChange]], replies: Sequence[object]) -> None:
    """Park the changes whose script call (see queue_changes, which says which changes each call carries) Redis
    refused; a script that was refused wrote nothing (Valkey checks memory before a script's first write)."""
    refused = [
        change
        for chunk, reply in zip(calls, replies, strict=True)
        if isinstance(reply, BaseException)
        for change in chunk
    ]
    if refused:
        log.warning("change events parked until Redis accepts them", extra={"events": len(refused)})
        await _park_or_log(pool, refused)


def _queue_stops(pipe: Pipeline, refs: Sequence[RunningRef], reason: commands.StopReason) -> None:
    for ref in refs:
        message = commands.stop_message(ref.worker_id, ref.task_id, ref.fence, reason)
        channels.queue_publish(pipe, keys.COMMAND_CHANNEL, message)


class EventEmitter:
    """Appends frequent, droppable change events (progress) in order, off the path that produced them;
    whatever accumulated while one append was under way goes out in the next, as one batch.

    Transitions are not sent this way: their events go out before the reply, so that a caller who gets no
    reply repeats the call and the repeat announces the state again.
    """

    def __init__(self, pool: asyncpg.Pool, redis: aioredis.Redis) -> None:
        self.pool = pool
        self.redis = redis
        self._queue: asyncio.Queue[list[TaskChange]] = asyncio.Queue()

    def submit(self, changes: Sequence[TaskChange]) -> None:
        if changes:
            self._queue.put_nowait(list(changes))

    def _take(self) -> list[TaskChange]:
        batch: list[TaskChange] = []
        while not self._queue.empty():
            batch.extend(self._queue.get_nowait())
        return batch

    async def run(self) -> None:
        while True:
            batch = await self._queue.get()
            batch.extend(self._take())
            try:
                await emit(self.redis, batch, self.pool)
            except Exception:  # one bad batch must not silence every later event
                log.exception("change events dropped", extra={"events": len(batch)})

    async def drain(self) -> None:
        """At shutdown: append what is still queued."""
        await emit(self.redis, self._take(), self.pool)
