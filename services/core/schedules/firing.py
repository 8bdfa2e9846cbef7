"""One firing of a schedule: the overlap policy applied, then one idempotent submission keyed by the firing.

The key (the tasks' request_id) names the schedule and the slot, so however many schedulers fire a slot, and
however often a firing is repeated after a crash, the slot has one batch of tasks: the insert of a second is
refused by the unique (owner_id, request_id, replica_index) and the first one's tasks are returned instead.
The submission and the cancel of a previous firing go through the same path as SubmitTask and CancelBatch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import asyncpg
import redis.asyncio as aioredis

from resilienttask.v1 import schedule_pb2
from services.core import task_actions
from services.core.limits import UserLimits
from services.core.schedule_validation import template_submission
from services.core.schedules.model import overlap_of
from services.core.task_model import ACTIVE, in_batch
from services.core.validation import SCHEDULE_REQUEST_PREFIX

_ACTIVE = sorted(ACTIVE)
_BATCH_ACTIVE = (
    f"SELECT EXISTS (SELECT 1 FROM tasks WHERE owner_id = $1 AND {in_batch('$1', '$2::uuid')} "
    "AND status = ANY($3::smallint[]))"
)


def slot_key(schedule_id: str, slot: datetime) -> str:
    """The request_id of a slot's firing: the schedule and the slot's time in epoch milliseconds."""
    epoch_ms = (slot - datetime(1970, 1, 1, tzinfo=slot.tzinfo)) // timedelta(milliseconds=1)
    return f"{SCHEDULE_REQUEST_PREFIX}{schedule_id}:{epoch_ms}"


def trigger_key(schedule_id: str, request_id: str) -> str:
    """The request_id of a TriggerSchedule call (a retried call with the same request_id fires once).

    The caller's request_id enters as a digest, so any request_id within its own bound makes a key within the
    tasks' request_id bound.
    """
    digest = hashlib.sha256(request_id.encode()).hexdigest()[:32]
    return f"{SCHEDULE_REQUEST_PREFIX}{schedule_id}:trigger:{digest}"


@dataclass(frozen=True)
class Firing:
    """What one firing did: the tasks it submitted (or found submitted), or nothing when the policy skipped it."""

    rows: list[asyncpg.Record] = field(default_factory=list)
    created: bool = False

    @property
    def skipped(self) -> bool:
        return not self.rows

    @property
    def batch_id(self) -> str | None:
        return str(self.rows[0]["batch_id"]) if self.rows else None


async def fired_before(pool: asyncpg.Pool, owner: str, key: str) -> bool:
    """True when this firing's tasks exist: a scheduler submitted them and died before recording it."""
    found = await pool.fetchval("SELECT true FROM tasks WHERE owner_id = $1 AND request_id = $2 LIMIT 1", owner, key)
    return found is not None


async def fire(
    pool: asyncpg.Pool,
    redis: aioredis.Redis,
    *,
    owner: str,
    schedule_id: str,
    spec: schedule_pb2.ScheduleSpec,
    previous_batch: str | None,
    key: str,
    limits: UserLimits,
) -> Firing:
    """Submit the schedule's task for this key, unless the overlap policy skips it.

    A limit of the owner's refuses the submission as it refuses SubmitTask (asyncpg error RT003). A firing
    repeated with the same key returns the first one's tasks whatever the policy: it was allowed then.
    """
    if previous_batch is not None and not await fired_before(pool, owner, key):
        overlap = overlap_of(spec)
        if overlap != schedule_pb2.OVERLAP_POLICY_ALLOW and await pool.fetchval(
            _BATCH_ACTIVE, owner, previous_batch, _ACTIVE
        ):
            if overlap == schedule_pb2.OVERLAP_POLICY_SKIP:
                return Firing()
            await task_actions.cancel(pool, redis, owner, batch_id=previous_batch)
    submission = template_submission(spec.task, key, schedule_id)
    rows, created = await task_actions.submit(pool, redis, owner, submission, limits)
    return Firing(rows, created)
