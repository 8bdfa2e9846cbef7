"""The SDK's requests and models for delayed tasks and schedules: what reaches the wire, what is refused
locally (before a call), and that a schedule read back gives the options that created it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from resilienttask import CatchupPolicy, OverlapPolicy, TaskStatus
from resilienttask._convert import (
    ScheduleOptions,
    retry_request,
    schedule_from_proto,
    schedule_spec,
    spec_options,
    stats_from_proto,
    submit_request,
    task_from_proto,
)
from resilienttask.v1 import schedule_pb2, task_pb2

SUBMIT = {"kind": "", "payload": None, "workload": 0, "max_runtime": None, "replicas": 1, "max_attempts": None}


def test_submit_takes_a_time_or_a_delay_not_both() -> None:
    at = datetime(2026, 12, 24, 18, 0, tzinfo=ZoneInfo("Europe/Paris"))
    request = submit_request("x", **SUBMIT, request_id="r", run_at=at)
    assert request.WhichOneof("start") == "run_at"
    assert request.run_at.ToDatetime(tzinfo=UTC) == datetime(2026, 12, 24, 17, 0, tzinfo=UTC)
    delayed = submit_request("x", **SUBMIT, request_id="r", delay=timedelta(minutes=5, milliseconds=250))
    assert delayed.WhichOneof("start") == "delay" and (delayed.delay.seconds, delayed.delay.nanos) == (300, 250_000_000)
    assert submit_request("x", **SUBMIT, request_id="r", delay=0).WhichOneof("start") == "delay"
    assert submit_request("x", **SUBMIT, request_id="r").WhichOneof("start") is None
    with pytest.raises(ValueError, match="not both"):
        submit_request("x", **SUBMIT, request_id="r", run_at=at, delay=5)
    with pytest.raises(ValueError, match="time zone"):
        submit_request("x", **SUBMIT, request_id="r", run_at=datetime(2026, 12, 24, 18, 0))
    with pytest.raises(ValueError, match=">= 0"):
        submit_request("x", **SUBMIT, request_id="r", delay=-1)


def test_retry_carries_its_delay_only_when_given() -> None:
    assert not retry_request("t", None).HasField("delay")
    assert retry_request("t", 90).delay.seconds == 90


def test_a_cron_spec_on_the_wire() -> None:
    spec = schedule_spec(
        "nightly",
        ScheduleOptions(
            cron="0 3 * * *",
            time_zone="Europe/Paris",
            kind="sleep",
            payload={"k": [1, "two"]},
            workload=timedelta(seconds=30),
            max_runtime=60,
            replicas=2,
            max_attempts=4,
            overlap="cancel_previous",
            catchup=CatchupPolicy.ALL,
            catchup_limit=5,
            jitter=timedelta(seconds=2),
        ),
    )
    assert spec.WhichOneof("timing") == "cron"
    assert (spec.cron.expression, spec.cron.time_zone) == ("0 3 * * *", "Europe/Paris")
    assert spec.task.name == "nightly", "the tasks are named after the schedule unless task_name says otherwise"
    assert (spec.task.kind, spec.task.replicas, spec.task.max_attempts) == ("sleep", 2, 4)
    assert (spec.task.workload.seconds, spec.task.max_runtime.seconds, spec.jitter.seconds) == (30, 60, 2)
    assert spec.overlap == schedule_pb2.OVERLAP_POLICY_CANCEL_PREVIOUS
    assert (spec.catchup, spec.catchup_limit) == (schedule_pb2.CATCHUP_POLICY_ALL, 5)


def test_an_interval_spec_leaves_the_defaults_to_the_server() -> None:
    spec = schedule_spec("tick", ScheduleOptions(interval=1.5, task_name="tock"))
    assert spec.WhichOneof("timing") == "interval" and (spec.interval.seconds, spec.interval.nanos) == (1, 500_000_000)
    assert spec.task.name == "tock" and not spec.task.HasField("max_runtime") and not spec.HasField("jitter")
    assert (spec.overlap, spec.catchup, spec.catchup_limit) == (0, 0, 0)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        (ScheduleOptions(), ValueError, "exactly one of cron and interval"),
        (ScheduleOptions(cron="* * * * *", interval=5), ValueError, "exactly one of cron and interval"),
        (ScheduleOptions(interval=5, time_zone="UTC"), ValueError, "time_zone only applies"),
        ({"interval": 5, "every": 5}, TypeError, "unknown schedule option"),
        (ScheduleOptions(interval=5, overlap="sometimes"), ValueError, "sometimes"),
        (ScheduleOptions(interval=-1), ValueError, ">= 0"),
    ],
)
def test_bad_specs_are_refused_before_any_call(options: ScheduleOptions, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        schedule_spec("s", options)


def test_a_schedule_read_back_gives_the_options_that_made_it() -> None:
    options = ScheduleOptions(
        cron="*/5 * * * *",
        time_zone="Europe/Paris",
        task_name="report",
        kind="fail",
        payload={"a": 1},
        workload=timedelta(seconds=3),
        max_runtime=timedelta(minutes=2),
        replicas=3,
        max_attempts=2,
        overlap=OverlapPolicy.ALLOW,
        catchup=CatchupPolicy.SKIP,
        catchup_limit=7,
        jitter=timedelta(milliseconds=500),
    )
    message = schedule_pb2.Schedule(
        id="s-1",
        spec=schedule_spec("every five", options),
        last_status=task_pb2.TASK_STATUS_SCHEDULED,
        last_error="max_stored_tasks reached",
        fired=4,
        skipped=1,
        version=9,
    )
    message.next_runs.add().FromDatetime(datetime(2026, 12, 24, 17, 5))
    schedule = schedule_from_proto(message)
    assert (schedule.name, schedule.cron, schedule.time_zone, schedule.interval) == (
        "every five",
        "*/5 * * * *",
        "Europe/Paris",
        None,
    )
    assert schedule.next_run == datetime(2026, 12, 24, 17, 5, tzinfo=UTC)
    assert schedule.last_error == "max_stored_tasks reached"
    assert (schedule.last_status, schedule.fired, schedule.skipped, schedule.last_slot) == (
        TaskStatus.SCHEDULED,
        4,
        1,
        None,
    )
    assert schedule_spec(schedule.name, spec_options(schedule)) == message.spec
    data = schedule.to_dict()
    assert (data["overlap"], data["catchup"], data["task"]["max_runtime_s"], data["jitter_s"]) == (
        "allow",
        "skip",
        120.0,
        0.5,
    )

    interval = schedule_from_proto(schedule_pb2.Schedule(id="s-2", spec=schedule_spec("tick", {"interval": 30})))
    assert (interval.cron, interval.interval, interval.last_status, interval.next_run) == (
        None,
        timedelta(seconds=30),
        None,
        None,
    )
    assert (interval.overlap, interval.catchup) == (OverlapPolicy.SKIP, CatchupPolicy.LATEST), "the documented defaults"
    assert schedule_spec("tick", spec_options(interval)).interval.seconds == 30


def test_tasks_and_stats_carry_the_new_fields() -> None:
    message = task_pb2.Task(id="t", status=task_pb2.TASK_STATUS_SCHEDULED, schedule_id="s-1")
    message.run_at.FromDatetime(datetime(2026, 12, 24, 17, 0))
    task = task_from_proto(message)
    assert (task.status, task.schedule_id, task.done) == (TaskStatus.SCHEDULED, "s-1", False)
    assert task.run_at == datetime(2026, 12, 24, 17, 0, tzinfo=UTC)
    assert task.to_dict()["run_at"] == "2026-12-24T17:00:00+00:00"
    assert task_from_proto(task_pb2.Task(id="u")).run_at is None
    assert stats_from_proto(task_pb2.TaskStats(scheduled=3, active=1)).to_dict()["scheduled"] == 3
