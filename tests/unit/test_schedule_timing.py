"""Slots of cron and interval schedules, daylight-saving changes included, and the checks of a ScheduleSpec."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from resilienttask.v1 import schedule_pb2
from services.core import schedule_validation
from services.core.errors import InvalidArgument
from services.core.schedules.firing import slot_key
from services.core.schedules.timing import CronTiming, IntervalTiming, TimingError, check_cron, upcoming, zone

PARIS = ZoneInfo("Europe/Paris")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def test_spring_forward_a_skipped_wall_time_fires_once_at_the_next_valid_time() -> None:
    # 2026-03-29 in Paris: 02:00 CET jumps to 03:00 CEST, so 02:30 does not exist that night.
    daily = CronTiming("30 2 * * *", PARIS)
    runs = upcoming(daily, datetime(2026, 3, 28, 12, tzinfo=PARIS), 3)
    assert runs == [utc(2026, 3, 29, 1, 0), utc(2026, 3, 30, 0, 30), utc(2026, 3, 31, 0, 30)]
    assert runs[0].astimezone(PARIS).hour == 3
    # Every half hour: 01:30 CET, then straight to 03:00 CEST (one real hour later), nothing in between.
    half_hourly = CronTiming("*/30 * * * *", PARIS)
    assert upcoming(half_hourly, datetime(2026, 3, 29, 1, 1, tzinfo=PARIS), 3) == [
        utc(2026, 3, 29, 0, 30),
        utc(2026, 3, 29, 1, 0),
        utc(2026, 3, 29, 1, 30),
    ]


def test_fall_back_a_repeated_wall_time_fires_once_and_every_instant_of_the_repeated_hour_once() -> None:
    # 2026-10-25 in Paris: 03:00 CEST goes back to 02:00 CET, so 02:00-02:59 happens twice.
    daily = CronTiming("30 2 * * *", PARIS)
    assert upcoming(daily, datetime(2026, 10, 24, 12, tzinfo=PARIS), 2) == [
        utc(2026, 10, 25, 0, 30),  # 02:30 CEST, the first occurrence only
        utc(2026, 10, 26, 1, 30),
    ]
    # Every half hour names instants: both 02:00 and both 02:30 are distinct real times, each fires once.
    half_hourly = CronTiming("*/30 * * * *", PARIS)
    slots, count = half_hourly.slots(utc(2026, 10, 24, 23, 30), utc(2026, 10, 25, 2, 0), keep=10)
    assert count == 6
    assert slots == [utc(2026, 10, 24, 23, 30) + timedelta(minutes=30 * i) for i in range(6)]


def test_cron_slots_keep_the_newest_and_count_them_all() -> None:
    minutely = CronTiming("* * * * *", zone(""))
    slots, count = minutely.slots(utc(2026, 1, 1, 0, 0), utc(2026, 1, 1, 0, 59, 30), keep=3)
    assert count == 60
    assert slots == [utc(2026, 1, 1, 0, 57), utc(2026, 1, 1, 0, 58), utc(2026, 1, 1, 0, 59)]
    assert minutely.next_after(utc(2026, 1, 1, 0, 59)) == utc(2026, 1, 1, 1, 0)
    assert minutely.next_after(utc(2026, 1, 1, 0, 59, 0) - timedelta(microseconds=1)) == utc(2026, 1, 1, 0, 59)


def test_interval_slots_count_from_the_anchor() -> None:
    anchor = utc(2026, 1, 1, 12, 0, 0)
    every = IntervalTiming(1500, anchor)
    assert every.next_after(anchor) == anchor + timedelta(milliseconds=1500)
    assert every.next_after(anchor + timedelta(milliseconds=1500)) == anchor + timedelta(milliseconds=3000)
    assert every.next_after(anchor - timedelta(hours=1)) == anchor + timedelta(milliseconds=1500)
    start = anchor + timedelta(milliseconds=1500)
    slots, count = every.slots(start, anchor + timedelta(seconds=10), keep=2)
    assert count == 6  # 1.5, 3, 4.5, 6, 7.5, 9 s
    assert slots == [anchor + timedelta(milliseconds=7500), anchor + timedelta(milliseconds=9000)]
    assert every.slots(start, start - timedelta(milliseconds=1), keep=5) == ([], 0)


def test_a_slot_key_is_the_schedule_and_the_slot_in_epoch_milliseconds() -> None:
    assert slot_key("s", utc(1970, 1, 1, 0, 0, 1) + timedelta(milliseconds=5)) == "schedule:s:1005"


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("* * *", "5 fields"),
        ("* * * * * *", "5 fields"),
        ("@hourly", "5 fields"),
        ("61 * * * *", "invalid cron expression"),
        ("0 0 31 2 *", "invalid cron expression"),
        ("a b c d e", "invalid cron expression"),
        ("* " * 150, "at most 200"),
    ],
)
def test_bad_cron_expressions_are_refused(expression: str, reason: str) -> None:
    with pytest.raises(TimingError, match=reason):
        check_cron(expression)


@pytest.mark.parametrize("name", ["Mars/Olympus_Mons", "../../etc/passwd", "Europe", "UTC\x00"])
def test_unknown_time_zones_are_refused(name: str) -> None:
    with pytest.raises(TimingError, match="unknown time zone"):
        zone(name)


def _spec(**changes: object) -> schedule_pb2.ScheduleSpec:
    spec = schedule_pb2.ScheduleSpec(name="nightly", task=schedule_pb2.TaskTemplate(name="job"))
    spec.interval.FromSeconds(60)
    for name, value in changes.items():
        if name == "cron":
            spec.cron.CopyFrom(value)  # type: ignore[arg-type]
        elif name in ("interval", "jitter"):
            getattr(spec, name).FromMilliseconds(value)
        elif name == "task":
            spec.task.CopyFrom(value)  # type: ignore[arg-type]
        else:
            setattr(spec, name, value)
    return spec


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"name": " "}, "spec.name"),
        ({"cron": schedule_pb2.CronTiming(expression="61 * * * *")}, "spec.cron.expression"),
        ({"cron": schedule_pb2.CronTiming(expression="0 3 * * *", time_zone="Nowhere/City")}, "spec.cron.time_zone"),
        ({"interval": 999}, "spec.interval"),
        ({"interval": 367 * 24 * 3600 * 1000}, "spec.interval"),
        ({"jitter": 60_000}, "spec.jitter"),
        ({"interval": 7200_000, "jitter": 3600_001}, "spec.jitter"),
        # A cron schedule's jitter stays below the shortest time between its slots.
        ({"cron": schedule_pb2.CronTiming(expression="* * * * *"), "jitter": 60_000}, "spec.jitter"),
        ({"cron": schedule_pb2.CronTiming(expression="0,1 * * * *"), "jitter": 120_000}, "spec.jitter"),
        ({"catchup_limit": 101}, "spec.catchup_limit"),
        ({"catchup_limit": -1}, "spec.catchup_limit"),
        ({"overlap": 9}, "spec.overlap"),
        ({"catchup": 9}, "spec.catchup"),
        ({"task": schedule_pb2.TaskTemplate(name="")}, "spec.task.name"),
        ({"task": schedule_pb2.TaskTemplate(name="j", replicas=51)}, "spec.task.replicas"),
        ({"task": schedule_pb2.TaskTemplate(name="j", max_attempts=11)}, "spec.task.max_attempts"),
        ({"task": schedule_pb2.TaskTemplate(name="j", kind="nope")}, "spec.task.kind"),
    ],
)
def test_each_bad_spec_field_is_named(changes: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        schedule_validation.spec(_spec(**changes), ["sleep"])
    assert refused.value.field == field


def test_a_spec_without_timing_or_task_is_refused() -> None:
    spec = _spec()
    spec.ClearField("interval")
    with pytest.raises(InvalidArgument, match=r"spec\.timing"):
        schedule_validation.spec(spec, ["sleep"])
    spec = _spec()
    spec.ClearField("task")
    with pytest.raises(InvalidArgument, match=r"spec\.task"):
        schedule_validation.spec(spec, ["sleep"])


def test_a_good_spec_is_kept_with_its_cron_fields_normalised() -> None:
    spec = _spec(cron=schedule_pb2.CronTiming(expression=" 0  3 * * 1-5 ", time_zone="America/New_York"))
    checked = schedule_validation.spec(spec, ["sleep"])
    assert checked.cron.expression == "0 3 * * 1-5"
    assert checked.cron.time_zone == "America/New_York"


def test_a_cron_jitter_below_the_shortest_gap_is_kept() -> None:
    spec = _spec(cron=schedule_pb2.CronTiming(expression="*/5 * * * *"), jitter=299_999)
    assert schedule_validation.spec(spec, ["sleep"]).jitter.ToMilliseconds() == 299_999
