"""Task summaries, what change events carry: no payload or result, and a size bound that holds for any task."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf import timestamp_pb2

from resilienttask.v1 import task_pb2
from services.core import events, task_summary
from services.core.events import TaskChange
from services.core.task_model import row_to_summary
from services.core.task_summary import CUT_MARK, ERROR_BYTES, MAX_SUMMARY_BYTES, clip, summarize
from tests.widest import TIME_FIELDS, widest_task


def test_a_summary_of_the_widest_task_stays_within_the_bound() -> None:
    summary = summarize(widest_task())
    assert summary.summary
    assert not summary.HasField("payload") and not summary.HasField("result")
    assert summary.ByteSize() <= MAX_SUMMARY_BYTES
    assert len(summary.error.encode()) <= ERROR_BYTES and summary.error.endswith(CUT_MARK)
    # The bound is not loose by much either: a tighter figure in the docs would be wrong.
    assert summary.ByteSize() > MAX_SUMMARY_BYTES - 200


def test_a_summary_keeps_every_field_a_watcher_draws() -> None:
    task = task_pb2.Task(
        id=str(uuid.uuid4()),
        name="resize",
        kind="sleep",
        status=task_pb2.TASK_STATUS_SUCCEEDED,
        progress=1.0,
        attempt=2,
        max_attempts=3,
        worker_id="worker-1",
        error="first attempt failed",
        request_id="req-1",
        batch_id=str(uuid.uuid4()),
        replica_index=4,
        dead_lettered=False,
        version=7,
    )
    for name in TIME_FIELDS:
        getattr(task, name).seconds = 1_700_000_000
    expected = task_pb2.Task()
    expected.CopyFrom(task)
    expected.summary = True
    task.payload.update({"image": "cat.png"})
    task.result.number_value = 42
    assert summarize(task) == expected
    assert task.HasField("payload") and task.HasField("result"), "the task summarized is left as it was"


def test_clip_cuts_at_a_character_boundary() -> None:
    assert clip("short", 5) == "short"
    assert clip("ééé", 5) == "éé"
    assert clip("ééé", 5, CUT_MARK) == "é" + CUT_MARK
    assert clip("\U0001f600" * 3, 11) == "\U0001f600" * 2


def test_a_change_always_carries_a_summary() -> None:
    change = TaskChange("owner", widest_task(), 0)
    assert change.task.summary and not change.task.HasField("payload")
    assert TaskChange("owner", change.task, 0).task is change.task, "a summary is not summarized again"


def test_the_entry_bound_covers_the_summary_and_the_other_fields() -> None:
    """The feed entry (the larger one): the summary plus owner, id, after, seq, prev and deleted, names included."""
    widest_id = f"{2**64 - 1}-{2**64 - 1}"
    fields = {
        "owner": str(uuid.uuid4()),
        "id": widest_id,
        "after": widest_id,
        "seq": str(2**63 - 1),
        "task": b"t" * MAX_SUMMARY_BYTES,
        "prev": str(task_pb2.TASK_STATUS_TIMED_OUT),
        "deleted": "1",
    }
    size = sum(len(name) + len(value) for name, value in fields.items())
    assert size <= events.MAX_ENTRY_BYTES
    assert task_summary.MAX_SUMMARY_BYTES < events.MAX_ENTRY_BYTES


@pytest.mark.parametrize(
    "at",
    [
        datetime(2026, 12, 6, 14, 0, 0, 123456, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2026, 3, 29, 3, 30, tzinfo=timezone(timedelta(hours=2))),
        datetime(2026, 12, 6, 14, 0, 0, 1),  # naive: read as UTC
    ],
)
def test_task_times_are_set_as_from_datetime_sets_them(at: datetime) -> None:
    expected = timestamp_pb2.Timestamp()
    expected.FromDatetime(at)
    row = {
        "id": uuid.uuid4(),
        "name": "t",
        "kind": "sleep",
        "status": task_pb2.TASK_STATUS_SCHEDULED,
        "progress": 0.0,
        "attempt": 0,
        "max_attempts": 3,
        "worker_id": "",
        "error": "",
        "request_id": "r",
        "batch_id": uuid.uuid4(),
        "replica_index": 0,
        "dead_lettered": False,
        "version": 1,
        "workload_ms": 0,
        "max_runtime_ms": 1000,
        "created_at": at,
        "started_at": None,
        "finished_at": None,
        "run_at": at,
    }
    task = row_to_summary(row)
    assert task.created_at == expected and task.run_at == expected
