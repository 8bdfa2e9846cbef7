"""Cluster-wide gauges (queue depth and oldest age per kind, the worker pool), exported by one scheduler only.

Every scheduler runs this loop when metrics are on; each interval, one of them holds a short Redis lease
(the equivalent of SET NX PX, renewed by its holder) and only that one reads PostgreSQL and the worker
registry and exports the gauges. The others export `resilienttask_cluster_gauges_exporter 0` and no cluster
gauge at all, so a sum or max over every scheduler counts the cluster once, and N schedulers cost one query
per interval, not N. When the holder dies, its lease lapses after three intervals and another scheduler
takes over; a holder that cannot reach Redis stops exporting at once (it can no longer tell that it is the
only one).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import asyncpg
import redis.asyncio as aioredis
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from services.core import keys, worker_registry
from services.core.errors import STORE_ERRORS
from services.core.metrics import PREFIX
from services.core.task_model import QUEUED

log = logging.getLogger(__name__)

# Renew our lease (same holder) or take a free one; 1 when this process holds it afterwards. The lease is a
# hash with one field (its holder) and an expiry: the same as SET NX PX, atomic in one script, with only the
# commands the services' Redis user has anyway (services/core/redis_acl.py).
_HOLD_LUA = """
local holder = redis.call('HMGET', KEYS[1], 'holder')[1]
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('HSET', KEYS[1], 'holder', ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
# Let the lease go now (it lapses at once) if we still hold it.
_RELEASE_LUA = """
if redis.call('HMGET', KEYS[1], 'holder')[1] == ARGV[1] then redis.call('PEXPIRE', KEYS[1], 1) end
return 0
"""

# Queued tasks per kind: all of them (depth), and the age of the oldest one waiting for a slot, counted from
# when it became runnable: its publication, its submission (or its run_at, for a delayed task) when it waits for
# its owner's share of the slots (more workers raise that share, so it is backlog too), or the time it was due to
# be published. Tasks
# waiting out a retry backoff are not waiting for a slot yet. The partial indexes on queued tasks serve it.
_QUEUE = f"""
SELECT kind, count(*) AS depth,
       coalesce(extract(epoch FROM now() - min(
           CASE WHEN published THEN published_at WHEN held THEN coalesce(run_at, created_at) ELSE publish_after END
       ) FILTER (WHERE published OR held OR publish_after <= now())), 0)::float8 AS oldest_s
FROM tasks WHERE status = {QUEUED} GROUP BY kind
"""


@dataclass
class ClusterSnapshot:
    """The gauges as last computed by the exporting scheduler."""

    depth: dict[str, int] = field(default_factory=dict)
    oldest_s: dict[str, float] = field(default_factory=dict)
    workers_alive: int = 0
    slots_busy: int = 0
    slots_total: int = 0


class ClusterGauges(Collector):
    """The lease loop (run on the event loop) and the collector (read on the scrape thread)."""

    def __init__(self, pool: asyncpg.Pool, redis: aioredis.Redis, holder_id: str, interval_s: float) -> None:
        self.pool = pool
        self.redis = redis
        self.holder_id = holder_id
        self.interval_s = interval_s
        self.lease_ms = int(interval_s * 3000)
        # None while another scheduler exports (or we could not tell): replaced whole, never mutated, so the
        # scrape thread always reads one consistent snapshot.
        self.snapshot: ClusterSnapshot | None = None
        # Kinds seen queued or served: they stay exported at 0 once drained, rather than vanishing.
        self._kinds: set[str] = set()

    async def run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                self.snapshot = await self.refresh() if await self.hold() else None
            except STORE_ERRORS as exc:
                self.snapshot = None
                log.warning("cluster gauges not refreshed", extra={"error": repr(exc)})
            except Exception:  # anything else must not end the loop: the gauges would vanish for good
                self.snapshot = None
                log.exception("cluster gauges failed; will retry")
            await asyncio.sleep(max(0.0, self.interval_s - (time.monotonic() - started)))

    async def hold(self) -> bool:
        held = await self.redis.eval(_HOLD_LUA, 1, keys.METRICS_EXPORTER_LEASE, self.holder_id, self.lease_ms)  # type: ignore[misc]
        return bool(held)

    async def release(self) -> None:
        """On shutdown: hand the lease over now rather than after it lapses."""
        with contextlib.suppress(RedisError, OSError):
            await self.redis.eval(_RELEASE_LUA, 1, keys.METRICS_EXPORTER_LEASE, self.holder_id)  # type: ignore[misc]
        self.snapshot = None

    async def refresh(self) -> ClusterSnapshot:
        rows = await self.pool.fetch(_QUEUE)
        workers = await worker_registry.live_workers(self.redis)
        snapshot = ClusterSnapshot(
            depth={r["kind"]: r["depth"] for r in rows},
            oldest_s={r["kind"]: r["oldest_s"] for r in rows},
            workers_alive=len(workers),
            slots_busy=sum(w.busy for w in workers),
            slots_total=sum(w.slots for w in workers),
        )
        self._kinds |= set(snapshot.depth) | {kind for w in workers for kind in w.kinds}
        for kind in self._kinds:
            snapshot.depth.setdefault(kind, 0)
            snapshot.oldest_s.setdefault(kind, 0.0)
        return snapshot

    def describe(self) -> Iterator[Metric]:
        return iter(())  # the series depend on the lease: nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        snapshot = self.snapshot
        exporter = GaugeMetricFamily(
            f"{PREFIX}_cluster_gauges_exporter",
            "1 on the one scheduler exporting the cluster-wide gauges (queue, workers), 0 on the others",
        )
        exporter.add_metric([], 1 if snapshot is not None else 0)
        yield exporter
        if snapshot is None:
            return
        depth = GaugeMetricFamily(f"{PREFIX}_queue_depth", "Tasks queued, by kind (cluster-wide)", labels=["kind"])
        oldest = GaugeMetricFamily(
            f"{PREFIX}_queue_oldest_age_seconds",
            "How long the oldest runnable queued task has waited, by kind (cluster-wide; 0 when none)",
            labels=["kind"],
        )
        for kind in sorted(snapshot.depth):
            depth.add_metric([kind], snapshot.depth[kind])
            oldest.add_metric([kind], snapshot.oldest_s[kind])
        alive = GaugeMetricFamily(f"{PREFIX}_workers_alive", "Workers that heartbeat recently (cluster-wide)")
        alive.add_metric([], snapshot.workers_alive)
        slots = GaugeMetricFamily(
            f"{PREFIX}_worker_slots", "Slots of the live workers, busy and total (cluster-wide)", labels=["state"]
        )
        slots.add_metric(["busy"], snapshot.slots_busy)
        slots.add_metric(["total"], snapshot.slots_total)
        yield from (depth, oldest, alive, slots)
