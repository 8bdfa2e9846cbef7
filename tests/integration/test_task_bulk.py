"""A task's history (GetTaskHistory) and the bulk actions (CancelTasks, RetryTasks, DeleteTasks) through the edge:
attempts of a task that failed twice then succeeded, pages of a filter taken exactly once with exact counts,
idempotent repeats, finished-only deletes, and another user's ids skipped without a trace."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import grpc
import pytest

from resilienttask.v1 import scheduler_pb2, task_pb2
from tests.conftest import Stores
from tests.helpers import eventually
from tests.integration.accounts import signup
from tests.integration.tasks import UserTasks

S = task_pb2
QUEUED, RUNNING, CANCELLING = S.TASK_STATUS_QUEUED, S.TASK_STATUS_RUNNING, S.TASK_STATUS_CANCELLING
SUCCEEDED, FAILED, CANCELLED = S.TASK_STATUS_SUCCEEDED, S.TASK_STATUS_FAILED, S.TASK_STATUS_CANCELLED
SCHEDULED, UNSPECIFIED = S.TASK_STATUS_SCHEDULED, S.TASK_STATUS_UNSPECIFIED
LONG_S = 600.0


class Operator(UserTasks):
    """The bulk calls and GetTaskHistory on behalf of one account."""

    async def history(self, task_id: str) -> scheduler_pb2.GetTaskHistoryResponse:
        return await self.stub.GetTaskHistory(
            scheduler_pb2.GetTaskHistoryRequest(task_id=task_id), metadata=self.account.metadata
        )

    async def bulk(self, action: str, selection: scheduler_pb2.TaskSelection, **page: Any) -> Any:
        method = getattr(self.stub, f"{action}Tasks")
        request = getattr(scheduler_pb2, f"{action}TasksRequest")(selection=selection, **page)
        return await method(request, metadata=self.account.metadata)

    async def by_ids(self, action: str, ids: list[str]) -> tuple[int, int]:
        reply = await self.bulk(action, scheduler_pb2.TaskSelection(ids=scheduler_pb2.TaskIds(task_ids=ids)))
        assert reply.next_page_token == ""
        return reply.affected, reply.skipped

    async def by_filter(self, action: str, task_filter: scheduler_pb2.TaskFilter, page_size: int) -> list[Any]:
        """Every page of the filter, as the replies came."""
        replies, token = [], ""
        while True:
            reply = await self.bulk(
                action, scheduler_pb2.TaskSelection(filter=task_filter), page_size=page_size, page_token=token
            )
            replies.append(reply)
            token = reply.next_page_token
            if not token:
                return replies

    async def statuses(self, ids: list[str]) -> dict[str, int]:
        return {task_id: (await self.get(task_id)).status for task_id in ids}


async def test_history_of_a_task_that_failed_twice_then_succeeded(edge: grpc.aio.Channel) -> None:
    user = Operator(edge, await signup(edge, "history"))
    # The fail kind recovers from its third attempt on (payload succeed_on_attempt).
    request = scheduler_pb2.SubmitTaskRequest(name="flaky", kind="fail", max_attempts=3, request_id=str(uuid.uuid4()))
    request.payload.update({"succeed_on_attempt": 3})
    task = (await user.stub.SubmitTask(request, metadata=user.account.metadata)).tasks[0]
    await user.wait_for(task.id, {SUCCEEDED})

    reply = await user.history(task.id)
    assert reply.task.id == task.id and reply.task.status == SUCCEEDED
    assert reply.task.payload["succeed_on_attempt"] == 3  # the task whole
    assert [(a.attempt, a.outcome) for a in reply.attempts] == [(1, FAILED), (2, FAILED), (3, SUCCEEDED)]
    assert [a.error for a in reply.attempts] == [
        "RuntimeError: simulated failure of attempt 1",
        "RuntimeError: simulated failure of attempt 2",
        "",
    ]
    for attempt in reply.attempts:
        assert attempt.worker_id and attempt.started_at.ToDatetime() <= attempt.finished_at.ToDatetime()
    moves = [(t.from_status, t.to_status, t.attempt) for t in reply.transitions]
    assert moves == [
        (UNSPECIFIED, QUEUED, 0),
        (QUEUED, RUNNING, 1),
        (RUNNING, QUEUED, 1),
        (QUEUED, RUNNING, 2),
        (RUNNING, QUEUED, 2),
        (QUEUED, RUNNING, 3),
        (RUNNING, SUCCEEDED, 3),
    ]
    assert reply.transitions[2].detail == "RuntimeError: simulated failure of attempt 1"
    assert [t.version for t in reply.transitions] == sorted(t.version for t in reply.transitions)
    assert reply.transitions[-1].version == reply.task.version
    assert not reply.truncated

    # Another user's task is not found, exactly like an unknown one.
    other = Operator(edge, await signup(edge, "history-other"))
    for task_id in (task.id, str(uuid.uuid4())):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await other.history(task_id)
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND


async def test_history_keeps_the_latest_thousand_transitions(edge: grpc.aio.Channel, stores: Stores) -> None:
    user = Operator(edge, await signup(edge, "history-long"))
    task = (await user.submit(name="long story", delay_s=3600))[0]
    # 1,100 stored transitions (written straight into the history: making them through calls would take minutes).
    conn = await asyncpg.connect(stores.database_url)
    try:
        await conn.execute(
            "INSERT INTO task_history_stored (task_id, version, from_status, to_status, attempt, detail) "
            "SELECT $1, 1 + v, 8, 8, 0, 'step ' || v FROM generate_series(1, 1100) AS v",
            task.id,
        )
    finally:
        await conn.close()
    reply = await user.history(task.id)
    assert reply.truncated
    assert len(reply.transitions) == 1000
    assert reply.transitions[0].detail == "step 101" and reply.transitions[-1].detail == "step 1100"
    await user.cancel(task.id)


async def test_bulk_retry_of_a_hundred_failed_tasks_through_a_filter(edge: grpc.aio.Channel) -> None:
    user = Operator(edge, await signup(edge, "bulk-retry"))
    name = f"nightly {uuid.uuid4().hex[:8]}"
    tasks = [
        t for _ in range(2) for t in await user.submit("fail", name=name, workload_s=0, max_attempts=1, replicas=50)
    ]
    ids = [t.id for t in tasks]
    failed = scheduler_pb2.TaskFilter(name_contains=name, statuses=[FAILED])

    async def all_failed() -> bool:
        reply = await user.stub.CountTasks(
            scheduler_pb2.CountTasksRequest(filter=failed), metadata=user.account.metadata
        )
        return reply.count == 100

    await eventually(all_failed, timeout_s=60, message="100 tasks failed")
    replies = await user.by_filter("Retry", failed, page_size=40)
    assert [(r.affected, r.skipped) for r in replies] == [(40, 0), (40, 0), (20, 0)]

    # Every one was queued again and ran again (the fail kind fails it again: a second attempt in its history).
    async def ran_again() -> bool:
        for task_id in ids:
            if len((await user.history(task_id)).attempts) != 2:
                return False
        return True

    await eventually(ran_again, timeout_s=60, message="every retried task ran again")
    transitions = (await user.history(ids[0])).transitions
    assert [(t.from_status, t.to_status, t.detail) for t in transitions][3] == (FAILED, QUEUED, "retry requested")


async def test_bulk_cancel_retry_delete_by_ids_are_idempotent_and_owner_scoped(
    edge: grpc.aio.Channel, stores: Stores
) -> None:
    user = Operator(edge, await signup(edge, "bulk"))
    intruded = Operator(edge, await signup(edge, "bulk-other"))
    name = f"bulk {uuid.uuid4().hex[:8]}"
    active = [t.id for t in await user.submit(name=name, workload_s=LONG_S, replicas=6)]
    later = [t.id for t in await user.submit(name=name, workload_s=LONG_S, replicas=2, delay_s=3600)]
    done = (await user.submit(name=name, workload_s=0))[0].id
    await user.wait_for(done, {SUCCEEDED})
    theirs = (await intruded.submit(name=name, delay_s=3600))[0]
    mine = active + later
    listed = [*mine, done, theirs.id, str(uuid.uuid4())]

    # Cancel: queued, running and scheduled ones; the finished, the other user's and the unknown are skipped.
    assert await user.by_ids("Cancel", listed) == (8, 3)
    await eventually(lambda: _all_in(user, mine, {CANCELLED}), timeout_s=30, message="every cancelled task stopped")
    assert await user.by_ids("Cancel", listed) == (0, 11)  # a repeat affects nothing

    # Retry: the 8 cancelled ones run again; a repeat finds them queued or running.
    assert await user.by_ids("Retry", listed) == (8, 3)
    assert set((await user.statuses(mine)).values()) <= {QUEUED, RUNNING}
    assert await user.by_ids("Retry", listed) == (0, 11)

    # Delete: finished tasks only; the 8 unfinished stay.
    assert await user.by_ids("Delete", listed) == (1, 10)
    assert await user.by_ids("Delete", listed) == (0, 11)

    # Cancel through a filter in pages of 10: running ones, and queued ones held beyond the user's share of the
    # worker slots (half of them: 15 of 30), each page exactly once.
    await eventually(lambda: _slot_cap_known(stores), timeout_s=30, message="the slot cap is set")
    more = [t.id for t in await user.submit(name=name, workload_s=LONG_S, replicas=20)]
    await eventually(lambda: _all_in(user, mine, {RUNNING}), timeout_s=30, message="retried tasks running")
    assert set((await user.statuses(mine + more)).values()) == {QUEUED, RUNNING}
    running_or_queued = scheduler_pb2.TaskFilter(name_contains=name, statuses=[QUEUED, RUNNING])
    replies = await user.by_filter("Cancel", running_or_queued, page_size=10)
    assert [(r.affected, r.skipped) for r in replies] == [(10, 0), (10, 0), (8, 0)]
    await eventually(lambda: _all_in(user, mine + more, {CANCELLED}), timeout_s=30, message="cancelled again")

    # Delete every one of the user's through a filter: the other user's twin stays as it was.
    replies = await user.by_filter("Delete", scheduler_pb2.TaskFilter(name_contains=name), page_size=10)
    assert sum(r.affected for r in replies) == 28 and sum(r.skipped for r in replies) == 0
    assert (await intruded.get(theirs.id)).status == SCHEDULED
    assert (await intruded.get(theirs.id)).version == theirs.version
    await intruded.cancel(theirs.id)


async def _slot_cap_known(stores: Stores) -> bool:
    conn = await asyncpg.connect(stores.database_url)
    try:
        return bool(await conn.fetchval("SELECT slots_per_user IS NOT NULL FROM slot_cap"))
    finally:
        await conn.close()


async def _all_in(user: Operator, ids: list[str], wanted: set[int]) -> bool:
    return set((await user.statuses(ids)).values()) <= wanted


async def test_a_page_of_a_filter_selection_skips_what_no_longer_qualifies(edge: grpc.aio.Channel) -> None:
    """The page is chosen, then acted on under row locks: unfinished tasks in a delete page are skipped, and the
    token still moves past them."""
    user = Operator(edge, await signup(edge, "bulk-delete"))
    name = f"mixed {uuid.uuid4().hex[:8]}"
    waiting = [t.id for t in await user.submit(name=name, replicas=3, delay_s=3600)]
    done = [t.id for t in await user.submit(name=name, workload_s=0, replicas=3)]
    for task_id in done:
        await user.wait_for(task_id, {SUCCEEDED})
    replies = await user.by_filter("Delete", scheduler_pb2.TaskFilter(name_contains=name), page_size=2)
    assert [(r.affected, r.skipped) for r in replies] == [(2, 0), (1, 1), (0, 2)]
    assert set((await user.statuses(waiting)).values()) == {SCHEDULED}
    replies = await user.by_filter("Cancel", scheduler_pb2.TaskFilter(name_contains=name), page_size=500)
    assert [(r.affected, r.skipped) for r in replies] == [(3, 0)]
