"""The worker pool as users see it: a Redis hash kept by the schedulers, read by the gateways."""

from __future__ import annotations

import json
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass, field

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from resilienttask.v1 import task_pb2
from services.core import keys

BUILTIN_KINDS = frozenset({"sleep", "fail", "spin"})
# A worker silent for this long is left out of the pool (its scheduler died before removing it).
STALE_AFTER_S = 15.0


@dataclass
class WorkerInfo:
    id: str
    slots: int
    busy: int = 0
    kinds: list[str] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)
    last_heartbeat: float = field(default_factory=time.time)

    def to_proto(self) -> task_pb2.Worker:
        worker = task_pb2.Worker(id=self.id, slots=self.slots, busy=self.busy, kinds=sorted(self.kinds))
        worker.started_at.FromMicroseconds(int(self.started_at * 1e6))
        worker.last_heartbeat.FromMicroseconds(int(self.last_heartbeat * 1e6))
        return worker


async def upsert(redis: aioredis.Redis, info: WorkerInfo, *, announce: bool) -> None:
    """Store the worker; announce joins and busy-slot changes to watchers."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hset(keys.WORKERS_HASH, info.id, json.dumps(asdict(info)))
        if announce:
            pipe.publish(keys.WORKERS_EVENTS_CHANNEL, info.id)
        await pipe.execute()


async def remove(redis: aioredis.Redis, worker_id: str) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hdel(keys.WORKERS_HASH, worker_id)
        pipe.publish(keys.WORKERS_EVENTS_CHANNEL, worker_id)
        await pipe.execute()


async def live_workers(redis: aioredis.Redis, stale_after_s: float = STALE_AFTER_S) -> list[WorkerInfo]:
    now = time.time()
    workers = []
    for raw in (await redis.hgetall(keys.WORKERS_HASH)).values():
        info = WorkerInfo(**json.loads(raw))
        if now - info.last_heartbeat <= stale_after_s:
            workers.append(info)
    return sorted(workers, key=lambda w: w.id)


async def silent_among(redis: aioredis.Redis, worker_ids: Collection[str], silent_after_s: float) -> set[str]:
    """Of worker_ids, those the schedulers saw go silent: no entry (their stream ended) or no heartbeat
    recorded for silent_after_s. Only schedulers write this hash, from the heartbeats on their streams."""
    ids = sorted(worker_ids)
    if not ids:
        return set()
    now = time.time()
    silent = set()
    for worker_id, raw in zip(ids, await redis.hmget(keys.WORKERS_HASH, ids), strict=True):
        try:
            last = float(json.loads(raw)["last_heartbeat"]) if raw is not None else float("-inf")
        except (ValueError, KeyError, TypeError):
            last = float("-inf")  # an entry we cannot read is no proof of life
        if now - last > silent_after_s:
            silent.add(worker_id)
    return silent


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
