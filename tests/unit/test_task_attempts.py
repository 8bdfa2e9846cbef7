"""A task's attempts as GetTaskHistory derives them from its transitions (services.core.task_history), for the
paths an integration test cannot steer: a reclaim from a silent worker, a cancel while running, a user's retry
that numbers attempts from 1 again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from resilienttask.v1 import task_pb2
from services.core.task_history import attempts

S = task_pb2
T0 = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def bound(second: int, from_status: int | None, to_status: int, attempt: int, worker: str, detail: str) -> Any:
    return {
        "from_status": from_status,
        "to_status": to_status,
        "at": T0 + timedelta(seconds=second),
        "attempt": attempt,
        "worker_id": worker,
        "detail": detail,
        "version": second,
    }


def summary(rows: list[Any]) -> list[tuple[int, str, int, str, int | None]]:
    return [
        (
            a.attempt,
            a.worker_id,
            a.outcome,
            a.error,
            int((a.finished_at.ToDatetime(tzinfo=UTC) - T0).total_seconds()) if a.HasField("finished_at") else None,
        )
        for a in attempts(rows)
    ]


def test_a_reclaimed_attempt_failed_with_its_worker_and_the_next_one_runs() -> None:
    rows = [
        bound(1, S.TASK_STATUS_QUEUED, S.TASK_STATUS_RUNNING, 1, "w1", "started"),
        bound(5, S.TASK_STATUS_RUNNING, S.TASK_STATUS_RUNNING, 2, "w2", "reclaimed from w1"),
    ]
    assert summary(rows) == [
        (1, "w1", S.TASK_STATUS_FAILED, "its worker stopped responding (reclaimed from w1)", 5),
        (2, "w2", S.TASK_STATUS_RUNNING, "", None),
    ]


def test_a_cancel_request_does_not_end_the_attempt_its_stop_does() -> None:
    rows = [
        bound(1, S.TASK_STATUS_QUEUED, S.TASK_STATUS_RUNNING, 1, "w1", "started"),
        bound(2, S.TASK_STATUS_RUNNING, S.TASK_STATUS_CANCELLING, 1, "w1", "cancel requested"),
        bound(3, S.TASK_STATUS_CANCELLING, S.TASK_STATUS_CANCELLED, 1, "w1", "stopped cooperatively"),
    ]
    assert summary(rows) == [(1, "w1", S.TASK_STATUS_CANCELLED, "stopped cooperatively", 3)]


def test_a_retried_task_numbers_its_attempts_again_and_a_success_has_no_error() -> None:
    rows = [
        bound(1, S.TASK_STATUS_QUEUED, S.TASK_STATUS_RUNNING, 1, "w1", "started"),
        bound(2, S.TASK_STATUS_RUNNING, S.TASK_STATUS_TIMED_OUT, 1, "w1", "abandoned"),
        bound(4, S.TASK_STATUS_QUEUED, S.TASK_STATUS_RUNNING, 1, "w2", "started"),
        bound(6, S.TASK_STATUS_RUNNING, S.TASK_STATUS_SUCCEEDED, 1, "w2", "finished"),
    ]
    assert summary(rows) == [
        (1, "w1", S.TASK_STATUS_TIMED_OUT, "abandoned", 2),
        (1, "w2", S.TASK_STATUS_SUCCEEDED, "", 6),
    ]


def test_an_end_without_its_start_is_left_out() -> None:
    """The oldest bound kept (of a very long story) may be an end whose start was cut off."""
    rows = [
        bound(1, S.TASK_STATUS_RUNNING, S.TASK_STATUS_QUEUED, 7, "w1", "boom"),
        bound(2, S.TASK_STATUS_QUEUED, S.TASK_STATUS_RUNNING, 8, "w1", "started"),
    ]
    assert summary(rows) == [(8, "w1", S.TASK_STATUS_RUNNING, "", None)]
