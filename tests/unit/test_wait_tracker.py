"""wait()'s bookkeeping: watch summaries are replaced by whole tasks, fetched per batch where it saves calls."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from resilienttask import Task, TaskStatus
from resilienttask._watch import WaitTracker


def _task(task_id: str, batch_id: str, version: int = 3, *, summary: bool = True) -> Task:
    return Task(
        id=task_id,
        name="t",
        kind="sleep",
        status=TaskStatus.SUCCEEDED,
        progress=1.0,
        attempt=1,
        max_attempts=3,
        worker_id="w",
        error="",
        request_id="r",
        batch_id=batch_id,
        replica_index=0,
        workload=timedelta(0),
        max_runtime=timedelta(seconds=1),
        dead_lettered=False,
        version=version,
        created_at=None,
        started_at=None,
        finished_at=None,
        result=None if summary else {"ok": True},
        summary=summary,
    )


def test_several_summaries_of_one_batch_are_listed_and_a_lone_one_is_got() -> None:
    tracker = WaitTracker(["a1", "a2", "b1"])
    for task in (_task("a1", "a"), _task("a2", "a"), _task("b1", "b")):
        tracker.apply(task)
    assert tracker.done()
    assert tracker.batches_to_list() == ["a"]
    assert tracker.summarized() == ["a1", "a2", "b1"]

    tracker.complete(_task("a1", "a", summary=False))
    tracker.complete(_task("a2", "a", summary=False))
    assert tracker.summarized() == ["b1"] and tracker.batches_to_list() == []
    tracker.complete(_task("b1", "b", summary=False))
    assert tracker.summarized() == []
    assert all(task.result == {"ok": True} for task in tracker.results())


def test_a_task_fetched_in_a_newer_state_is_waited_for_again_and_an_older_one_is_ignored() -> None:
    tracker = WaitTracker(["a1"])
    tracker.apply(_task("a1", "a", version=3))
    tracker.complete(_task("a1", "a", version=2, summary=False))
    assert tracker.summarized() == ["a1"], "an older state never replaces a newer one"
    retried = replace(_task("a1", "a", version=4, summary=False), status=TaskStatus.QUEUED)
    tracker.complete(retried)
    assert not tracker.done() and tracker.summarized() == []
