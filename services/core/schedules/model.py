"""A stored schedule: its spec, its timing, its policies, and the row → message conversion."""

from __future__ import annotations

import random
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from resilienttask.v1 import schedule_pb2
from services.core.schedules.timing import CronTiming, IntervalTiming, Timing, upcoming, zone

# Columns every schedule query returns; last_status comes from the latest firing's first task (a join).
SCHEDULE_COLUMNS = (
    "id, owner_id, request_id, spec, paused, anchor, next_slot, fire_at, last_slot, last_batch_id, last_error, "
    "fired, skipped, version, created_at, updated_at"
)
QUALIFIED_SCHEDULE_COLUMNS = ", ".join(f"s.{c.strip()}" for c in SCHEDULE_COLUMNS.split(","))
NEXT_RUNS = 5
DEFAULT_CATCHUP_LIMIT = 10


def parse_spec(raw: bytes) -> schedule_pb2.ScheduleSpec:
    spec = schedule_pb2.ScheduleSpec()
    spec.ParseFromString(raw)
    return spec


def timing_of(spec: schedule_pb2.ScheduleSpec, anchor: datetime) -> Timing:
    """The timing of a validated spec; an interval's slots count from the anchor."""
    if spec.WhichOneof("timing") == "cron":
        return CronTiming(" ".join(spec.cron.expression.split()), zone(spec.cron.time_zone))
    return IntervalTiming(spec.interval.ToMilliseconds(), anchor)


def overlap_of(spec: schedule_pb2.ScheduleSpec) -> int:
    return spec.overlap or schedule_pb2.OVERLAP_POLICY_SKIP


def catchup_of(spec: schedule_pb2.ScheduleSpec) -> int:
    return spec.catchup or schedule_pb2.CATCHUP_POLICY_LATEST


def catchup_limit_of(spec: schedule_pb2.ScheduleSpec) -> int:
    return spec.catchup_limit or DEFAULT_CATCHUP_LIMIT


def jitter_of(spec: schedule_pb2.ScheduleSpec) -> timedelta:
    return timedelta(milliseconds=spec.jitter.ToMilliseconds())


def fire_time(spec: schedule_pb2.ScheduleSpec, slot: datetime | None) -> datetime | None:
    """The slot delayed by a random part of the jitter, drawn once per slot (the row keeps it)."""
    if slot is None:
        return None
    jitter_ms = spec.jitter.ToMilliseconds()
    return slot + timedelta(milliseconds=random.randint(0, jitter_ms)) if jitter_ms > 0 else slot


def row_to_schedule(row: Mapping[str, Any]) -> schedule_pb2.Schedule:
    spec = parse_spec(row["spec"])
    schedule = schedule_pb2.Schedule(
        id=str(row["id"]),
        spec=spec,
        paused=row["paused"],
        last_batch_id=str(row["last_batch_id"]) if row["last_batch_id"] is not None else "",
        last_error=row["last_error"],
        fired=row["fired"],
        skipped=row["skipped"],
        version=row["version"],
    )
    if row.get("last_status"):
        schedule.last_status = row["last_status"]
    if row["next_slot"] is not None and not row["paused"]:
        for slot in upcoming(timing_of(spec, row["anchor"]), row["next_slot"], NEXT_RUNS):
            schedule.next_runs.add().FromDatetime(slot)
    if row["last_slot"] is not None:
        schedule.last_slot.FromDatetime(row["last_slot"])
    schedule.created_at.FromDatetime(row["created_at"])
    schedule.updated_at.FromDatetime(row["updated_at"])
    return schedule
