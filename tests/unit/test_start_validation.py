"""The start of a delayed submission: run_at and delay checked against the documented bounds, at a fixed now."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from services.core.errors import InvalidArgument
from services.core.transitions.user import Start
from services.core.validation import MAX_DELAY, RUN_AT_PAST_GRACE_S, delay_start, run_at_start

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def stamp(at: datetime) -> timestamp_pb2.Timestamp:
    value = timestamp_pb2.Timestamp()
    value.FromDatetime(at)
    return value


def duration(value: timedelta) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromTimedelta(value)
    return out


@pytest.mark.parametrize(
    ("run_at", "expected"),
    [
        (NOW + timedelta(milliseconds=1), Start(run_at=NOW + timedelta(milliseconds=1))),
        (NOW + MAX_DELAY, Start(run_at=NOW + MAX_DELAY)),
        (NOW, None),  # not in the future: at once
        (NOW - timedelta(seconds=RUN_AT_PAST_GRACE_S), None),
    ],
)
def test_run_at_within_bounds(run_at: datetime, expected: Start | None) -> None:
    assert run_at_start(stamp(run_at), NOW) == expected


@pytest.mark.parametrize(
    "run_at",
    [
        NOW - timedelta(seconds=RUN_AT_PAST_GRACE_S, milliseconds=1),
        NOW + MAX_DELAY + timedelta(seconds=1),
        datetime(1970, 1, 1, tzinfo=UTC),
    ],
)
def test_run_at_out_of_bounds_names_the_field(run_at: datetime) -> None:
    with pytest.raises(InvalidArgument) as refused:
        run_at_start(stamp(run_at), NOW)
    assert refused.value.field == "run_at"


def test_malformed_run_at_names_the_field() -> None:
    with pytest.raises(InvalidArgument) as refused:
        run_at_start(timestamp_pb2.Timestamp(seconds=int(NOW.timestamp()) + 10, nanos=-1), NOW)
    assert refused.value.field == "run_at"


@pytest.mark.parametrize(
    ("delay", "expected"),
    [
        (timedelta(0), None),
        (timedelta(milliseconds=1), Start(delay_ms=1)),
        (MAX_DELAY, Start(delay_ms=int(MAX_DELAY.total_seconds() * 1000))),
    ],
)
def test_delay_within_bounds(delay: timedelta, expected: Start | None) -> None:
    assert delay_start("delay", duration(delay)) == expected


@pytest.mark.parametrize(
    "delay",
    [
        duration_pb2.Duration(seconds=-1),
        duration(MAX_DELAY + timedelta(milliseconds=1)),
        duration_pb2.Duration(nanos=-5),
    ],
)
def test_delay_out_of_bounds_names_the_field(delay: duration_pb2.Duration) -> None:
    with pytest.raises(InvalidArgument) as refused:
        delay_start("delay", delay)
    assert refused.value.field == "delay"
