"""The worker pool as users see it: a Redis hash kept by the schedulers, read by the gateways."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from resilienttask.v1 import task_pb2
from services.core import channels, keys

log = logging.getLogger(__name__)

BUILTIN_KINDS = frozenset({"sleep", "fail", "spin"})
# A worker silent for this long is left out of the pool (its scheduler died before removing it).
STALE_AFTER_S = 15.0

# Bounds of an entry as read back: generous for any real worker, small enough that one entry cannot make a
# reply huge or a number overflow the proto (int32 slots, Timestamps before year 10000).
MAX_ENTRY_BYTES = 64 * 1024
MAX_KINDS = 256
MAX_NAME_CHARS = 256
MAX_SLOTS = 2**31 - 1
MAX_EPOCH_S = 253_402_300_799.0


# Malformed entries already logged by this process: the pool is read every few seconds, and one bad entry
# should cost one log line, not one per read. Forgotten wholesale when it grows past its bound.
_reported: set[tuple[bytes | str, bytes | str]] = set()
_REPORTED_MAX = 1024


class MalformedEntry(ValueError):
    """A registry entry that does not describe a worker (never written by a scheduler of this version)."""


@dataclass
class WorkerInfo:
    id: str
    slots: int
    busy: int = 0
    kinds: list[str] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)
    last_heartbeat: float = field(default_factory=time.time)

    def to_proto(self, drain_deadline: float | None = None) -> task_pb2.Worker:
        """As ListWorkers shows it; drain_deadline (epoch s) when the worker drains."""
        worker = task_pb2.Worker(id=self.id, slots=self.slots, busy=self.busy, kinds=sorted(self.kinds))
        worker.started_at.FromMicroseconds(int(self.started_at * 1e6))
        worker.last_heartbeat.FromMicroseconds(int(self.last_heartbeat * 1e6))
        if drain_deadline is not None:
            worker.draining = True
            worker.drain_deadline.FromMicroseconds(int(drain_deadline * 1e6))
        return worker


async def upsert(
    redis: aioredis.Redis, info: WorkerInfo, *, announce: bool, holding: Collection[str] | None = None
) -> float | None:
    """Store the worker (and, from a heartbeat, the task ids it holds); announce joins and busy-slot changes.

    Returns the worker's drain deadline (epoch s) when it is marked draining, read in the same round trip."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hset(keys.WORKERS_HASH, info.id, json.dumps(asdict(info)))
        if holding is not None:
            report = {"at": info.last_heartbeat, "tasks": sorted(holding)}
            pipe.hset(keys.WORKERS_HOLDING_HASH, info.id, json.dumps(report))
        if announce:
            channels.queue_publish(pipe, keys.WORKERS_EVENTS_CHANNEL, info.id)
        pipe.hget(keys.WORKERS_DRAINING_HASH, info.id)
        replies = await pipe.execute()
    return _deadline(replies[-1])


async def remove(redis: aioredis.Redis, worker_id: str) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hdel(keys.WORKERS_HASH, worker_id)
        pipe.hdel(keys.WORKERS_HOLDING_HASH, worker_id)
        channels.queue_publish(pipe, keys.WORKERS_EVENTS_CHANNEL, worker_id)
        await pipe.execute()


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME_CHARS:
        raise MalformedEntry(f"{what} must be a string of 1 to {MAX_NAME_CHARS} characters")
    return value


def _count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SLOTS:
        raise MalformedEntry(f"{what} must be an integer from 0 to {MAX_SLOTS}")
    return value


def _epoch(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise MalformedEntry(f"{what} must be a finite number")
    if not 0 <= value <= MAX_EPOCH_S:
        raise MalformedEntry(f"{what} is out of range")
    return float(value)


def parse_entry(field_name: bytes | str, raw: bytes | str) -> WorkerInfo:
    """A registry entry as a WorkerInfo; MalformedEntry when it is not exactly what upsert() writes.

    Whatever reaches the hash is checked before use: a forged or corrupt entry must cost its own line in the
    pool, not every SubmitTask and ListWorkers (they read the pool) an INTERNAL error.
    """
    if len(raw) > MAX_ENTRY_BYTES:
        raise MalformedEntry(f"entry of {len(raw)} bytes (at most {MAX_ENTRY_BYTES})")
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedEntry(f"not JSON: {exc}") from exc
    expected = {"id", "slots", "busy", "kinds", "started_at", "last_heartbeat"}
    if not isinstance(value, dict) or set(value) != expected:
        raise MalformedEntry(f"not an object with exactly the fields {', '.join(sorted(expected))}")
    field_text = field_name.decode(errors="replace") if isinstance(field_name, bytes) else field_name
    worker_id = _name(value["id"], "id")
    if worker_id != field_text:
        raise MalformedEntry("id differs from the entry's field")
    kinds = value["kinds"]
    if not isinstance(kinds, list) or len(kinds) > MAX_KINDS:
        raise MalformedEntry(f"kinds must be a list of at most {MAX_KINDS} names")
    return WorkerInfo(
        id=worker_id,
        slots=_count(value["slots"], "slots"),
        busy=_count(value["busy"], "busy"),
        kinds=[_name(kind, "a kind") for kind in kinds],
        started_at=_epoch(value["started_at"], "started_at"),
        last_heartbeat=_epoch(value["last_heartbeat"], "last_heartbeat"),
    )


def _report(field_name: bytes | str, raw: bytes | str, exc: MalformedEntry) -> None:
    key = (field_name[:MAX_NAME_CHARS], raw[:MAX_ENTRY_BYTES])
    if key in _reported:
        return
    if len(_reported) >= _REPORTED_MAX:
        _reported.clear()
    _reported.add(key)
    log.warning(
        "malformed worker registry entry skipped",
        extra={"entry": repr(field_name[:MAX_NAME_CHARS]), "reason": str(exc)},
    )


async def live_workers(redis: aioredis.Redis, stale_after_s: float = STALE_AFTER_S) -> list[WorkerInfo]:
    """The workers that heartbeat recently; malformed entries are skipped (and logged), never fatal."""
    return _live(await redis.hgetall(keys.WORKERS_HASH), stale_after_s)


async def pool_view(redis: aioredis.Redis) -> list[task_pb2.Worker]:
    """The live workers as users see them (ListWorkers, the watch streams), draining ones marked; one round trip."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.WORKERS_HASH)
        pipe.hgetall(keys.WORKERS_DRAINING_HASH)
        entries, marked = await pipe.execute()
    drains = _drains(marked)
    return [info.to_proto(drains.get(info.id)) for info in _live(entries, STALE_AFTER_S)]


def _live(entries: Mapping[Any, Any], stale_after_s: float) -> list[WorkerInfo]:
    now = time.time()
    workers = []
    for field_name, raw in entries.items():
        try:
            info = parse_entry(field_name, raw)
        except MalformedEntry as exc:
            _report(field_name, raw, exc)
            continue
        if now - info.last_heartbeat <= stale_after_s:
            workers.append(info)
    return sorted(workers, key=lambda w: w.id)


async def released_among(
    redis: aioredis.Redis, held: Mapping[str, Collection[tuple[str, float]]], silent_after_s: float
) -> set[str]:
    """Of the tasks given by holder (task id, epoch seconds its attempt started), those their holder let go, by
    the schedulers' own record (only schedulers write these hashes, from the heartbeats on their streams):

    - every task of a holder gone silent: no entry (its stream ended) or no heartbeat for silent_after_s;
    - a task its holder, still heartbeating, no longer lists: its latest report, made silent_after_s or more after
      the attempt started (so no report sent before the start reply can count, whatever the clocks' skew), does
      not name it. A worker that lost Redis stops its handlers unreported (it can no longer keep their entries)
      yet keeps heartbeating; without this its tasks would wait for the runtime sweep.
    """
    ids = sorted(held)
    if not ids:
        return set()
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hmget(keys.WORKERS_HASH, ids)
        pipe.hmget(keys.WORKERS_HOLDING_HASH, ids)
        beats, reports = await pipe.execute()
    now = time.time()
    released: set[str] = set()
    for worker_id, beat, report in zip(ids, beats, reports, strict=True):
        tasks = held[worker_id]
        if now - _last_heartbeat(beat) > silent_after_s:
            released.update(task_id for task_id, _ in tasks)
            continue
        reported_at, listed = _holding(report)
        released.update(
            task_id
            for task_id, started_at in tasks
            if reported_at - started_at >= silent_after_s and task_id not in listed
        )
    return released


def _last_heartbeat(raw: bytes | None) -> float:
    try:
        return float(json.loads(raw)["last_heartbeat"]) if raw is not None else float("-inf")
    except (ValueError, KeyError, TypeError):
        return float("-inf")  # an entry we cannot read is no proof of life


def _holding(raw: bytes | None) -> tuple[float, frozenset[str]]:
    """When the holder last reported and what it listed; no report (or an unreadable one) proves nothing."""
    try:
        report = json.loads(raw) if raw is not None else None
        if isinstance(report, dict) and isinstance(report.get("tasks"), list):
            return float(report["at"]), frozenset(t for t in report["tasks"] if isinstance(t, str))
    except (ValueError, KeyError, TypeError):
        pass
    return float("-inf"), frozenset()


# -- draining workers ------------------------------------------------------------------------------------
# A drain entry of a worker that left the pool is dropped this long after its deadline (worker ids are unique
# per process, so a stale entry never drains a new worker; this only bounds the hash).
DRAIN_ENTRY_KEPT_S = 3600.0


def _deadline(raw: bytes | str | None) -> float | None:
    """The deadline of a drain entry; None for no entry (or one we cannot read, which drains nothing)."""
    if raw is None or len(raw) > MAX_ENTRY_BYTES:
        return None
    try:
        return _epoch(json.loads(raw)["deadline"], "deadline")
    except (ValueError, KeyError, TypeError, MalformedEntry):
        return None


async def drain_deadline(redis: aioredis.Redis, worker_id: str) -> float | None:
    """When a draining worker hands back what still runs (epoch s); None when it is not draining."""
    return _deadline(await redis.hget(keys.WORKERS_DRAINING_HASH, worker_id))


async def draining(redis: aioredis.Redis) -> dict[str, float]:
    """worker id -> drain deadline (epoch s) of every worker marked draining."""
    return _drains(await redis.hgetall(keys.WORKERS_DRAINING_HASH))


def _drains(entries: Mapping[Any, Any]) -> dict[str, float]:
    found: dict[str, float] = {}
    for field_name, raw in entries.items():
        deadline = _deadline(raw)
        if deadline is not None:
            found[field_name.decode(errors="replace") if isinstance(field_name, bytes) else field_name] = deadline
    return found


async def mark_draining(redis: aioredis.Redis, worker_id: str, deadline: float) -> float:
    """Mark the worker draining until deadline (epoch s), or keep the earlier deadline it has; returns the one
    kept. Entries of workers gone from the pool long past their deadline are dropped on the way."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.WORKERS_DRAINING_HASH)
        pipe.hgetall(keys.WORKERS_HASH)
        marked, pool = await pipe.execute()
    current = _deadline(marked.get(worker_id.encode(), marked.get(worker_id)))
    if current is not None and current <= deadline:
        return current
    members = {name.decode(errors="replace") if isinstance(name, bytes) else name for name in pool}
    now = time.time()
    stale = [
        name
        for name, raw in marked.items()
        if (name.decode(errors="replace") if isinstance(name, bytes) else name) not in members
        and (_deadline(raw) or 0.0) < now - DRAIN_ENTRY_KEPT_S
    ]
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hset(keys.WORKERS_DRAINING_HASH, worker_id, json.dumps({"deadline": deadline}))
        if stale:
            pipe.hdel(keys.WORKERS_DRAINING_HASH, *stale)
        channels.queue_publish(pipe, keys.WORKERS_EVENTS_CHANNEL, worker_id)
        await pipe.execute()
    return deadline


async def known_kinds(redis: aioredis.Redis) -> list[str]:
    """Built-in kinds plus those served by some live worker (only the built-ins while Redis is down,
    so submissions keep working: they are committed and published once Redis is back)."""
    kinds = set(BUILTIN_KINDS)
    try:
        workers = await live_workers(redis)
    except (RedisError, OSError):
        workers = []
    for info in workers:
        kinds.update(info.kinds)
    return sorted(kinds)


class KindsCache:
    """known_kinds() without a Redis round trip per submission: the kinds change when workers come and go,
    so a short-lived copy serves, and a kind missing from it is looked up again before it is refused."""

    def __init__(self, redis: aioredis.Redis, ttl_s: float = 2.0) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self._kinds: list[str] = []
        self._fetched_at = float("-inf")

    async def kinds(self, wanted: str = "") -> list[str]:
        fresh = time.monotonic() - self._fetched_at < self.ttl_s
        if not fresh or (wanted and wanted not in self._kinds):
            self._kinds = await known_kinds(self.redis)
            self._fetched_at = time.monotonic()
        return self._kinds
