"""ScheduleService: a user's recurring schedules. Every call acts for the authenticated caller and filters by owner.

The gateway stores what the user sets and when the schedule fires next; the schedulers fire it (services/
scheduler/schedule_firer.py). TriggerSchedule fires here, under the schedule's row lock, as a scheduler would.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import asyncpg
import grpc
import redis.asyncio as aioredis

from resilienttask.v1 import schedule_pb2, schedule_pb2_grpc
from services.core import schedule_validation, validation, worker_registry
from services.core.auth_interceptor import current_user_id
from services.core.errors import NotFound, translate_errors
from services.core.field_limits import rule
from services.core.limits import UserLimits
from services.core.schedules import firing, store
from services.core.schedules.model import fire_time, parse_spec, row_to_schedule, timing_of
from services.core.task_model import rows_to_tasks

SCHEDULE_NOT_FOUND = "schedule not found"
SERVICE_NAME = schedule_pb2.DESCRIPTOR.services_by_name["ScheduleService"].full_name
PAGE_SIZE = rule(schedule_pb2.ListSchedulesRequest, "page_size")


def _now() -> datetime:
    """Now, in whole milliseconds: an interval's slots count from it, and a firing's key names its slot in ms."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


class ScheduleServicer(schedule_pb2_grpc.ScheduleServiceServicer):
    def __init__(self, pool: asyncpg.Pool, redis: aioredis.Redis, limits: UserLimits | None = None) -> None:
        self.pool = pool
        self.redis = redis
        self.limits = limits or UserLimits()
        self.kinds = worker_registry.KindsCache(redis)
        # A trigger holds one pooled connection (the schedule's row lock) while its firing takes a second one:
        # at most half the pool may trigger at once, so concurrent triggers can never take every connection and
        # wait on each other for ever.
        self._triggers = asyncio.Semaphore(max(1, pool.get_max_size() // 2))

    async def _spec(self, value: schedule_pb2.ScheduleSpec) -> schedule_pb2.ScheduleSpec:
        kind = value.task.kind or validation.DEFAULT_KIND
        return schedule_validation.spec(value, await self.kinds.kinds(kind))

    async def _get(self, owner: str, schedule_id: str) -> schedule_pb2.Schedule:
        row = await store.get(self.pool, owner, schedule_id)
        if row is None:
            raise NotFound(SCHEDULE_NOT_FOUND)
        return row_to_schedule(row)

    @translate_errors
    async def CreateSchedule(
        self, request: schedule_pb2.CreateScheduleRequest, context: grpc.aio.ServicerContext
    ) -> schedule_pb2.CreateScheduleResponse:
        owner = current_user_id()
        spec = await self._spec(request.spec)
        request_id = schedule_validation.request_id(request.request_id) or str(uuid.uuid4())
        now = _now()
        next_slot = None if request.paused else timing_of(spec, now).next_after(now)
        row = await store.create(
            self.pool,
            owner,
            request_id,
            spec.SerializeToString(),
            request.paused,
            now,
            next_slot,
            fire_time(spec, next_slot),
            self.limits.max_schedules,
        )
        return schedule_pb2.CreateScheduleResponse(schedule=row_to_schedule(row))

    @translate_errors
    async def GetSchedule(
        self, request: schedule_pb2.GetScheduleRequest, context: grpc.aio.ServicerContext
    ) -> schedule_pb2.GetScheduleResponse:
        schedule_id = validation.uuid_field("schedule_id", request.schedule_id)
        return schedule_pb2.GetScheduleResponse(schedule=await self._get(current_user_id(), schedule_id))

    @translate_errors
    async def ListSchedules(
        self, request: schedule_pb2.ListSchedulesRequest, context: grpc.aio.ServicerContext
    ) -> schedule_pb2.ListSchedulesResponse:
        limit = validation.page_size(request.page_size, PAGE_SIZE)
        after = validation.decode_page_token(request.page_token)
        rows = await store.list_page(self.pool, current_user_id(), limit + 1, after)
        next_token = ""
        if len(rows) > limit:
            rows = rows[:limit]
            next_token = validation.encode_page_token(rows[-1]["created_at"], str(rows[-1]["id"]))
        return schedule_pb2.ListSchedulesResponse(
            schedules=[row_to_schedule(r) for r in rows], next_page_token=next_token
        )

    async def _change(
        self, schedule_id: str, *, spec: schedule_pb2.ScheduleSpec | None = None, paused: bool | None = None
    ) -> schedule_pb2.Schedule:
        """Set a new spec (slots counted again from now) or the paused flag (a resumed schedule fires from its
        next slot after now: slots passed while paused are not caught up), under the row lock."""
        owner = current_user_id()
        async with self._triggers, self.pool.acquire() as conn, conn.transaction():
            row = await store.lock(conn, owner, schedule_id)
            if row is None:
                raise NotFound(SCHEDULE_NOT_FOUND)
            now = _now()
            new_spec = spec if spec is not None else parse_spec(row["spec"])
            anchor = now if spec is not None else row["anchor"]
            now_paused = row["paused"] if paused is None else paused
            if spec is None and now_paused == row["paused"]:
                pass  # pausing a paused schedule or resuming a running one changes nothing
            else:
                next_slot = None if now_paused else timing_of(new_spec, anchor).next_after(now)
                await store.set_timing(
                    conn,
                    schedule_id,
                    spec=new_spec.SerializeToString(),
                    paused=now_paused,
                    anchor=anchor,
                    next_slot=next_slot,
                    fire_at=fire_time(new_spec, next_slot),
                    now=now,
                )
        return await self._get(owner, schedule_id)

    @translate_errors
    async def UpdateSchedule(
        self, request: schedule_pb2.UpdateScheduleRequest, context: grpc.aio.ServicerContext
    ) -> schedule_pb2.UpdateScheduleResponse:
        schedule_id = validation.uuid_field("schedule_id", request.schedule_id)
        spec = await self._spec(request.spec)
        return schedule_pb2.UpdateScheduleResponse(schedule=await self._change(schedule_id, spec=spec))

    @translate_errors
    async def PauseSchedule(
        self, request: schedule_pb2.PauseScheduleRequest, context: grpc.aio.ServicerContext
    ) -> schedule_pb2.PauseScheduleResponse:
        schedule_id = validation.uuid_field("schedule_id", request.schedule_id)
        return schedule_pb2.PauseScheduleResponse(schedule=await self._change(schedule_id, paused=True))

    @translate_errors
    async def ResumeSchedule(
        self, request: schedule_pb2.ResumeScheduleRequest, context: grpc.aio.ServicerContext
    ) -> schedule_pb2.ResumeScheduleResponse:
        schedule_id = validation.uuid_field("schedule_id", request.schedule_id)
        return schedule_pb2.ResumeScheduleResponse(schedule=await self._change(schedule_id, paused=False))

    @translate_errors
    async def TriggerSchedule(
        self, request: schedule_pb2.TriggerScheduleRequest, context: grpc.aio.ServicerContext
    ) -> schedule_pb2.TriggerScheduleResponse:
        owner = current_user_id()
        schedule_id = validation.uuid_field("schedule_id", request.schedule_id)
        key = firing.trigger_key(schedule_id, schedule_validation.request_id(request.request_id) or str(uuid.uuid4()))
        async with self._triggers, self.pool.acquire() as conn, conn.transaction():
            row = await store.lock(conn, owner, schedule_id)
            if row is None:
                raise NotFound(SCHEDULE_NOT_FOUND)
            fired = await firing.fire(
                self.pool,
                self.redis,
                owner=owner,
                schedule_id=schedule_id,
                spec=parse_spec(row["spec"]),
                previous_batch=str(row["last_batch_id"]) if row["last_batch_id"] else None,
                key=key,
                limits=self.limits,
            )
            if fired.created or fired.skipped:
                await store.record_firings(
                    conn,
                    schedule_id,
                    last_slot=_now() if fired.created else None,
                    last_batch_id=fired.batch_id,
                    last_error="",
                    fired=int(fired.created),
                    skipped=int(fired.skipped),
                    advance=False,
                )
        return schedule_pb2.TriggerScheduleResponse(tasks=rows_to_tasks(fired.rows), skipped=fired.skipped)

    @translate_errors
    async def DeleteSchedule(
        self, request: schedule_pb2.DeleteScheduleRequest, context: grpc.aio.ServicerContext
    ) -> schedule_pb2.DeleteScheduleResponse:
        schedule_id = validation.uuid_field("schedule_id", request.schedule_id)
        if not await store.delete(self.pool, current_user_id(), schedule_id):
            raise NotFound(SCHEDULE_NOT_FOUND)
        return schedule_pb2.DeleteScheduleResponse()
