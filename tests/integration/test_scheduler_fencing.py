"""The scheduler's side of the lifecycle, driven by a real gRPC client acting as two workers.

An isolated scheduler (own database, own Redis database) so no live worker competes for the entries.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest

from resilienttask.v1 import task_pb2
from resilienttask.worker.v1 import worker_pb2
from services.core import commands, keys, outbox, task_store
from services.core.dispatch import split_ref
from services.core.transitions import user as transitions
from tests.helpers import eventually
from tests.integration.private_scheduler import Isolated, isolated, metadata, submit

__all__ = ["isolated"]  # the fixture, used by name


def item(row: asyncpg.Record, entry_id: str | None = None) -> worker_pb2.StartItem:
    return worker_pb2.StartItem(
        task_id=str(row["id"]), dispatch_id=str(row["dispatch_id"]), entry_id=entry_id or row["entry_id"]
    )


async def start(iso: Isolated, worker: str, *items: worker_pb2.StartItem) -> list[worker_pb2.StartResult]:
    return await (await iso.link(worker)).start_tasks(items)


async def finish(
    iso: Isolated, worker: str, task_id: str, fence: int, outcome: int, error: str = ""
) -> worker_pb2.FinishResult:
    held = worker_pb2.HeldTask(task_id=task_id, fence=fence)
    link = await iso.link(worker)
    (result,) = await link.finish_tasks([worker_pb2.FinishItem(task=held, outcome=outcome, error=error)])
    return result


async def test_reclaimed_entry_takes_over_and_stale_reports_are_refused(isolated: Isolated) -> None:
    (row,) = await submit(isolated)
    (first,) = await start(isolated, "worker-a", item(row))
    assert first.decision == worker_pb2.START_DECISION_RUN and first.task.attempt == 1
    # While worker-a's stream lives, the entry (claimed by worker-b) does not take its task.
    (held,) = await start(isolated, "worker-b", item(row))
    assert held.decision == worker_pb2.START_DECISION_DEFER and held.reason == "worker-a still holds the task"
    # The same entry, reclaimed by another worker after worker-a went silent: a new attempt, a new fence.
    await isolated.drop("worker-a")

    async def taken_over() -> worker_pb2.StartResult | None:
        (result,) = await start(isolated, "worker-b", item(row))
        return result if result.decision != worker_pb2.START_DECISION_DEFER else None  # until its stream is gone

    second = await eventually(taken_over, message="worker-b takes the task once worker-a's stream has ended")
    assert second.decision == worker_pb2.START_DECISION_RUN
    assert second.task.attempt == 2 and second.fence > first.fence and second.task.worker_id == "worker-b"
    stale = await finish(isolated, "worker-a", str(row["id"]), first.fence, worker_pb2.OUTCOME_SUCCEEDED)
    assert not stale.accepted and stale.reason == "superseded"
    fresh = await finish(isolated, "worker-b", str(row["id"]), second.fence, worker_pb2.OUTCOME_SUCCEEDED)
    assert fresh.accepted
    done = await task_store.get(isolated.pool, isolated.owner, str(row["id"]))
    assert done is not None and done["status"] == task_pb2.TASK_STATUS_SUCCEEDED and done["attempt"] == 2
    history = await isolated.pool.fetch(
        "SELECT to_status, fence, detail FROM task_history WHERE task_id = $1 ORDER BY version", row["id"]
    )
    assert [h["to_status"] for h in history] == [1, 2, 2, 4]
    assert "reclaimed from worker-a" in history[2]["detail"]


async def test_duplicate_entries_and_stale_dispatches_are_skipped(isolated: Isolated) -> None:
    (row,) = await submit(isolated)
    (run,) = await start(isolated, "worker-a", item(row))
    assert run.decision == worker_pb2.START_DECISION_RUN
    (dup,) = await start(isolated, "worker-b", item(row, entry_id="sleep:1-1"))
    assert dup.decision == worker_pb2.START_DECISION_SKIP and dup.reason == "duplicate entry"
    stale = worker_pb2.StartItem(task_id=str(row["id"]), dispatch_id=str(uuid.uuid4()), entry_id=row["entry_id"])
    (old,) = await start(isolated, "worker-b", stale)
    assert old.decision == worker_pb2.START_DECISION_SKIP and old.reason == "stale dispatch"
    (again,) = await start(isolated, "worker-a", item(row))
    assert again.decision == worker_pb2.START_DECISION_RUN, "a lost start reply is answered again"
    assert again.fence == run.fence and again.task.attempt == 1
    (twin,) = await start(isolated, "worker-a", item(row, entry_id="sleep:2-2"))
    assert twin.decision == worker_pb2.START_DECISION_SKIP and twin.reason == "duplicate entry"
    (missing,) = await start(
        isolated, "worker-a", worker_pb2.StartItem(task_id="nope", dispatch_id="x", entry_id="1-0")
    )
    assert missing.decision == worker_pb2.START_DECISION_SKIP


async def test_cancelled_before_start_is_skipped(isolated: Isolated) -> None:
    (row,) = await submit(isolated)
    await transitions.cancel(isolated.pool, isolated.owner, task_id=str(row["id"]))
    (result,) = await start(isolated, "worker-a", item(row))
    assert result.decision == worker_pb2.START_DECISION_SKIP and result.reason == "already finished"


async def test_failed_attempts_retry_with_backoff_then_dead_letter(isolated: Isolated) -> None:
    (row,) = await submit(isolated, max_attempts=2)
    task_id = str(row["id"])
    (run,) = await start(isolated, "worker-a", item(row))
    assert (await finish(isolated, "worker-a", task_id, run.fence, worker_pb2.OUTCOME_FAILED, "boom")).accepted
    queued = await task_store.get(isolated.pool, isolated.owner, task_id)
    assert queued is not None and queued["status"] == task_pb2.TASK_STATUS_QUEUED and queued["error"] == "boom"
    assert queued["dispatch_id"] != row["dispatch_id"]

    async def republished() -> asyncpg.Record | None:
        return await isolated.pool.fetchrow("SELECT * FROM tasks WHERE id = $1 AND published", task_id)

    again = await eventually(republished, message="the sweeper publishes the retry after its backoff")
    stream, entry_id = split_ref(again["entry_id"])
    assert stream == keys.dispatch_stream("sleep")
    assert await isolated.redis.xrange(stream, min=entry_id, max=entry_id)
    (second,) = await start(isolated, "worker-a", item(again))
    assert second.task.attempt == 2
    await finish(isolated, "worker-a", task_id, second.fence, worker_pb2.OUTCOME_FAILED, "boom again")
    dead = await task_store.get(isolated.pool, isolated.owner, task_id)
    assert dead is not None and dead["status"] == task_pb2.TASK_STATUS_FAILED and dead["dead_lettered"]


async def test_tasks_committed_while_redis_was_down_are_published_by_the_sweeper(isolated: Isolated) -> None:
    spec = transitions.Submission(
        name="t",
        kind="sleep",
        payload={},
        workload_ms=0,
        max_runtime_ms=60_000,
        replicas=3,
        max_attempts=1,
        request_id=str(uuid.uuid4()),
    )
    rows, _ = await transitions.submit(isolated.pool, isolated.owner, spec)
    # Nobody published them (as if XADD had failed); make them due now instead of after the grace.
    await isolated.pool.execute(
        "UPDATE tasks SET publish_after = now() WHERE id = ANY($1::uuid[])", [r["id"] for r in rows]
    )

    async def all_published() -> bool:
        flags = await isolated.pool.fetch(
            "SELECT published FROM tasks WHERE id = ANY($1::uuid[])", [r["id"] for r in rows]
        )
        return all(f["published"] for f in flags)

    await eventually(all_published, message="sweeper publishes")
    entries = await isolated.redis.xrange(keys.dispatch_stream("sleep"))
    published = {fields[b"task_id"].decode() for _, fields in entries}
    assert {str(r["id"]) for r in rows} <= published


async def test_cancel_of_a_running_task_is_pushed_down_the_worker_stream(isolated: Isolated) -> None:
    (row,) = await submit(isolated)
    (run,) = await start(isolated, "worker-a", item(row))
    # worker-a's stream from here on is this raw one (a second stream of one worker replaces the first).
    await isolated.drop("worker-a")
    requests: asyncio.Queue[worker_pb2.ConnectRequest | None] = asyncio.Queue()
    await requests.put(worker_pb2.ConnectRequest(hello=worker_pb2.WorkerHello(worker_id="worker-a", slots=1)))

    async def outgoing() -> AsyncIterator[worker_pb2.ConnectRequest]:
        while (message := await requests.get()) is not None:
            yield message

    call = isolated.stub.Connect(outgoing(), metadata=metadata("worker-a"))
    held = worker_pb2.HeldTask(task_id=str(row["id"]), fence=run.fence)
    await requests.put(worker_pb2.ConnectRequest(heartbeat=worker_pb2.WorkerHeartbeat(tasks=[held])))
    await requests.put(worker_pb2.ConnectRequest(progress=worker_pb2.ProgressReport(task=held, progress=0.5)))

    async def progressed() -> bool:
        current = await task_store.get(isolated.pool, isolated.owner, str(row["id"]))
        return current is not None and current["progress"] == 0.5

    await eventually(progressed, message="progress recorded")
    result = await transitions.cancel(isolated.pool, isolated.owner, task_id=str(row["id"]))
    await outbox.push_stop(isolated.redis, result.to_stop, commands.CANCELLED)
    while not (message := await asyncio.wait_for(call.read(), 10)).cancels:  # heartbeat acks come first
        assert message.heartbeat_acks
    (command,) = message.cancels
    assert command.task.task_id == str(row["id"]) and command.reason == commands.CANCELLED
    assert command.task.fence == run.fence
    stopped = worker_pb2.FinishItem(task=held, outcome=worker_pb2.OUTCOME_CANCELLED, error="stopped")
    await requests.put(worker_pb2.ConnectRequest(work=worker_pb2.WorkRequest(request_id=1, finish=[stopped])))
    while not (message := await asyncio.wait_for(call.read(), 10)).work:
        pass
    assert message.work[0].finish[0].accepted
    done = await task_store.get(isolated.pool, isolated.owner, str(row["id"]))
    assert done is not None and done["status"] == task_pb2.TASK_STATUS_CANCELLED
    await requests.put(None)
    call.cancel()


async def test_cancelled_outcomes_are_fenced_and_recorded_with_history(isolated: Isolated) -> None:
    cancelling, running = await submit(isolated, replicas=2)
    runs = {r.task_id: r for r in await start(isolated, "worker-a", item(cancelling), item(running))}
    await transitions.cancel(isolated.pool, isolated.owner, task_id=str(cancelling["id"]))
    for row, before in ((cancelling, task_pb2.TASK_STATUS_CANCELLING), (running, task_pb2.TASK_STATUS_RUNNING)):
        task_id, fence = str(row["id"]), runs[str(row["id"])].fence
        stale = await finish(isolated, "worker-a", task_id, fence - 1, worker_pb2.OUTCOME_CANCELLED, "stopped")
        assert not stale.accepted and stale.reason == "superseded"
        assert (await finish(isolated, "worker-a", task_id, fence, worker_pb2.OUTCOME_CANCELLED, "stopped")).accepted
        again = await finish(isolated, "worker-a", task_id, fence, worker_pb2.OUTCOME_CANCELLED, "stopped")
        assert not again.accepted and again.reason == "already finished"
        done = await task_store.get(isolated.pool, isolated.owner, task_id)
        assert done is not None and done["status"] == task_pb2.TASK_STATUS_CANCELLED and done["error"] == "stopped"
        assert done["finished_at"] is not None and not done["dead_lettered"]
        last = await isolated.pool.fetchrow(
            "SELECT from_status, to_status, version, fence, detail FROM task_history WHERE task_id = $1 "
            "ORDER BY version DESC LIMIT 1",
            row["id"],
        )
        assert last is not None
        assert (last["from_status"], last["to_status"]) == (before, task_pb2.TASK_STATUS_CANCELLED)
        assert last["version"] == done["version"] and last["fence"] == fence and last["detail"] == "stopped"


async def test_worker_service_needs_a_worker_token(isolated: Isolated) -> None:
    hello = worker_pb2.ConnectRequest(hello=worker_pb2.WorkerHello(worker_id="w", slots=1))
    call = isolated.stub.Connect(iter([hello]))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call.read()
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
