"""The firing of recurring schedules: every scheduler runs it, and each slot fires once whoever fires it.

A scheduler sleeps until the earliest schedule is due (or the database notifies a change of schedules, migration
0010), claims the due ones one at a time with FOR UPDATE SKIP LOCKED, fires them (services.core.schedules.
firing: one idempotent submission per slot), and moves each to its next slot in the same transaction that held
it. A scheduler that dies mid-firing releases the row with its connection; the next one to claim it repeats the
firing with the same key and finds the tasks already there. A due schedule another scheduler holds is waited
for on its row lock, so that its release (the holder's commit, or its death) is seen at once.

Slots missed while no scheduler ran (older than the grace below, jitter aside) follow the catch-up policy; the
latest due slot, if it is not that old, fires as usual. Every firing, catch-up ones included, obeys the overlap
policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import redis.asyncio as aioredis

from resilienttask.v1 import schedule_pb2
from services.core.db import listen_forever
from services.core.errors import LIMIT_REACHED, STORE_ERRORS, InvalidArgument
from services.core.limits import UserLimits
from services.core.schedules import firing, store
from services.core.schedules.model import (
    catchup_limit_of,
    catchup_of,
    fire_time,
    jitter_of,
    parse_spec,
    timing_of,
)
from services.core.settings import setting

log = logging.getLogger(__name__)

# Notified by the database whenever a schedule's fire_at changes (trigger of migration 0010).
SCHEDULES_CHANNEL = "rt_schedules"
# Schedules fired per pass before the next wake-up is computed: a pass never starves the rest of the loop.
FIRES_PER_PASS = 100


@dataclass(frozen=True)
class FiringConfig:
    """When a slot counts as missed, and how long the firing loop sleeps at most."""

    # A slot still unfired this long after its time (plus the schedule's jitter) was missed: no scheduler ran.
    misfire_grace_ms: int = setting(
        "RTASK_SCHEDULE_MISFIRE_GRACE_MS",
        1000,
        "a schedule's slot not fired this long after its time (plus its jitter) was missed, and its catch-up policy "
        "decides whether it still fires",
    )
    # A notification lost while the listener reconnected is caught then.
    max_sleep_ms: int = setting(
        "RTASK_SCHEDULE_MAX_SLEEP_MS", 30_000, "the longest the schedule firer sleeps without a wake-up"
    )
    contended_wait_ms: int = setting(
        "RTASK_SCHEDULE_CONTENDED_WAIT_MS",
        1000,
        "while another scheduler holds a due schedule, the longest wait for it to let the schedule go",
    )
    retry_after_ms: int = setting(
        "RTASK_SCHEDULE_RETRY_AFTER_MS",
        2000,
        "after a store outage, or a schedule whose firing failed for a reason of its own, firing is tried again "
        "after this long",
    )


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Outcome:
    fired: int = 0
    skipped: int = 0
    last_slot: datetime | None = None
    last_batch_id: str | None = None
    last_error: str = ""


class ScheduleFirer:
    def __init__(
        self, pool: asyncpg.Pool, redis: aioredis.Redis, limits: UserLimits, config: FiringConfig | None = None
    ) -> None:
        self.pool = pool
        self.redis = redis
        self.limits = limits
        self.config = config or FiringConfig()
        self.grace = timedelta(milliseconds=self.config.misfire_grace_ms)

    async def run(self) -> None:
        wake = asyncio.Event()
        async with asyncio.TaskGroup() as group:  # one failing cancels the other (see sweepers.run_sweepers)
            group.create_task(listen_forever(self.pool, SCHEDULES_CHANNEL, lambda _payload: wake.set(), wake.set))
            group.create_task(self._loop(wake))

    async def _loop(self, wake: asyncio.Event) -> None:
        while True:
            wake.clear()  # before looking: a change notified from here on wakes the sleep below
            try:
                await self.fire_due()
                delay_s = await self._sleep_s()
                if delay_s is None:  # due, but held by another scheduler: wait for it, then look again
                    await store.wait_for_holder(self.pool, _now(), self.config.contended_wait_ms)
                    continue
            except STORE_ERRORS as exc:
                log.warning("schedule firing failed; will retry", extra={"error": repr(exc)})
                delay_s = self.config.retry_after_ms / 1000
            except Exception:
                # Anything else (asyncpg's InternalClientError on a connection broken mid-query by a PostgreSQL
                # restart, for one) must not end the loop: without it no schedule fires on this scheduler.
                log.exception("schedule firing crashed; will retry")
                delay_s = self.config.retry_after_ms / 1000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), delay_s)

    async def _sleep_s(self) -> float | None:
        """How long until the earliest schedule is due; None when one is due already (another scheduler holds
        it: fire_due took every other)."""
        earliest = await store.earliest_fire_at(self.pool)
        if earliest is None:
            return self.config.max_sleep_ms / 1000
        delay_s = (earliest - _now()).total_seconds()
        if delay_s <= 0:
            return None
        return min(delay_s, self.config.max_sleep_ms / 1000)

    async def fire_due(self) -> int:
        """Fire every schedule due by now that no other scheduler holds; returns how many were handled."""
        handled = 0
        while handled < FIRES_PER_PASS:
            failed: asyncpg.Record | None = None
            async with self.pool.acquire() as conn, conn.transaction():
                row = await store.claim_due(conn, _now())
                if row is None:
                    return handled
                try:
                    await self._fire(conn, row)
                except STORE_ERRORS:
                    raise
                except Exception:
                    log.exception("schedule firing failed", extra={"schedule": str(row["id"])})
                    failed = row
            if failed is not None:
                retry_at = _now() + timedelta(milliseconds=self.config.retry_after_ms)
                await store.postpone(self.pool, str(failed["id"]), retry_at, "internal error; retrying")
            handled += 1
        return handled

    async def _fire(self, conn: asyncpg.Connection, row: asyncpg.Record) -> None:
        """Fire the due slots of one claimed schedule by its policies and move it to its next slot."""
        now = _now()
        schedule_id, owner = str(row["id"]), str(row["owner_id"])
        spec = parse_spec(row["spec"])
        timing = timing_of(spec, row["anchor"])
        limit = catchup_limit_of(spec)
        slots, count = timing.slots(row["next_slot"], now, limit + 1)
        on_time = bool(slots) and now - slots[-1] <= jitter_of(spec) + self.grace
        missed = slots[:-1] if on_time else slots
        missed_count = count - int(on_time)
        policy = catchup_of(spec)
        chosen = (
            []
            if policy == schedule_pb2.CATCHUP_POLICY_SKIP
            else missed[-1:]
            if policy == schedule_pb2.CATCHUP_POLICY_LATEST
            else missed[-limit:]
        )
        # The first due slot may have been fired by a scheduler that died before recording it: it counts.
        first = row["next_slot"]
        if (
            missed
            and missed[0] == first
            and first not in chosen
            and await firing.fired_before(self.pool, owner, firing.slot_key(schedule_id, first))
        ):
            chosen.insert(0, first)
        outcome = _Outcome(skipped=missed_count - len(chosen))
        if on_time:
            chosen.append(slots[-1])
        previous = str(row["last_batch_id"]) if row["last_batch_id"] else None
        for slot in chosen:
            await self._fire_slot(owner, schedule_id, spec, slot, previous, outcome)
            previous = outcome.last_batch_id or previous
        next_slot = timing.next_after(now) if count else row["next_slot"]
        await store.record_firings(
            conn,
            schedule_id,
            last_slot=outcome.last_slot,
            last_batch_id=outcome.last_batch_id,
            last_error=outcome.last_error,
            fired=outcome.fired,
            skipped=outcome.skipped,
            next_slot=next_slot,
            fire_at=fire_time(spec, next_slot),
        )
        if missed_count:
            log.info(
                "schedule caught up after missed slots",
                extra={"schedule": schedule_id, "missed": missed_count, "fired": len(chosen) - int(on_time)},
            )

    async def _fire_slot(
        self,
        owner: str,
        schedule_id: str,
        spec: schedule_pb2.ScheduleSpec,
        slot: datetime,
        previous: str | None,
        outcome: _Outcome,
    ) -> None:
        try:
            fired = await firing.fire(
                self.pool,
                self.redis,
                owner=owner,
                schedule_id=schedule_id,
                spec=spec,
                previous_batch=previous,
                key=firing.slot_key(schedule_id, slot),
                limits=self.limits,
            )
        except asyncpg.PostgresError as exc:
            if exc.sqlstate != LIMIT_REACHED:
                raise
            outcome.skipped += 1
            outcome.last_error = str(exc.args[0]) if exc.args else "limit reached"
            return
        except InvalidArgument as exc:
            # A stored template that today's bounds refuse: retrying cannot help, so the slot is skipped and
            # the reason shown on the schedule (an update with a valid template lets it fire again).
            outcome.skipped += 1
            outcome.last_error = str(exc)
            return
        if fired.skipped:
            outcome.skipped += 1
            return
        outcome.fired += 1
        outcome.last_slot = slot
        outcome.last_batch_id = fired.batch_id
        outcome.last_error = ""
