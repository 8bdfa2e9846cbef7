"""Ownership: user B, holding user A's task and batch ids, can neither see nor touch A's tasks.

Every SchedulerService RPC is tried by B against A's ids through Envoy; another user's task answers exactly
like a task that does not exist, and A's tasks are left as they were.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta

import grpc
import pytest
from google.protobuf import duration_pb2

from resilienttask.v1 import scheduler_pb2, scheduler_pb2_grpc, task_pb2
from tests.helpers import eventually
from tests.integration.accounts import Account, signup

# Long enough that A's active tasks stay active for the whole test; they are cancelled afterwards.
LONG_WORKLOAD_S = 600
STILL_ACTIVE = {task_pb2.TASK_STATUS_QUEUED, task_pb2.TASK_STATUS_RUNNING}


class Caller:
    """SchedulerService on behalf of one account."""

    def __init__(self, channel: grpc.aio.Channel, account: Account) -> None:
        self.account = account
        self.stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        self.md = account.metadata

    async def submit(self, *, replicas: int = 1, request_id: str | None = None) -> list[task_pb2.Task]:
        workload = duration_pb2.Duration()
        workload.FromTimedelta(timedelta(seconds=LONG_WORKLOAD_S))
        request = scheduler_pb2.SubmitTaskRequest(
            name="ownership", kind="sleep", workload=workload, replicas=replicas, request_id=request_id or ""
        )
        return list((await self.stub.SubmitTask(request, metadata=self.md)).tasks)

    async def get(self, task_id: str) -> task_pb2.Task:
        return (await self.stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=task_id), metadata=self.md)).task

    async def list_ids(self, **filters: object) -> set[str]:
        ids: set[str] = set()
        token = ""
        while True:
            reply = await self.stub.ListTasks(
                scheduler_pb2.ListTasksRequest(page_size=100, page_token=token, **filters), metadata=self.md
            )
            ids.update(t.id for t in reply.tasks)
            token = reply.next_page_token
            if not token:
                return ids

    async def cancelled(self, task_id: str) -> task_pb2.Task:
        """Cancel one of the caller's tasks and wait until it is CANCELLED."""
        await self.stub.CancelTask(scheduler_pb2.CancelTaskRequest(task_id=task_id), metadata=self.md)

        async def settled() -> task_pb2.Task | None:
            task = await self.get(task_id)
            return task if task.status == task_pb2.TASK_STATUS_CANCELLED else None

        return await eventually(settled, timeout_s=30, message=f"task {task_id} cancelled")


@dataclass
class Scene:
    owner: Caller
    intruder: Caller
    active: list[task_pb2.Task]  # one batch of replicas, queued or running
    finished: task_pb2.Task  # cancelled, so delete/retry/clear apply to it

    @property
    def all_ids(self) -> list[str]:
        return [t.id for t in self.active] + [self.finished.id]


@pytest.fixture
async def scene(edge: grpc.aio.Channel) -> AsyncIterator[Scene]:
    owner = Caller(edge, await signup(edge, "owner"))
    intruder = Caller(edge, await signup(edge, "intruder"))
    active = await owner.submit(replicas=3)
    finished = await owner.cancelled((await owner.submit())[0].id)
    scene = Scene(owner, intruder, active, finished)
    yield scene
    # Free the workers for the rest of the session.
    await owner.stub.CancelBatch(scheduler_pb2.CancelBatchRequest(batch_id=active[0].batch_id), metadata=owner.md)


async def _error(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


async def _assert_owner_tasks_untouched(scene: Scene) -> None:
    for task in scene.active:
        now = await scene.owner.get(task.id)
        assert now.status in STILL_ACTIVE, f"{task.id} was changed to {now.status}"
    finished = await scene.owner.get(scene.finished.id)
    assert (finished.status, finished.version) == (task_pb2.TASK_STATUS_CANCELLED, scene.finished.version)
    assert set(scene.all_ids) <= await scene.owner.list_ids()


@pytest.mark.parametrize("rpc", ["GetTask", "CancelTask", "RetryTask", "DeleteTask"])
async def test_another_users_task_is_not_found_exactly_like_a_missing_one(scene: Scene, rpc: str) -> None:
    stub, md = scene.intruder.stub, scene.intruder.md
    request_type = getattr(scheduler_pb2, f"{rpc}Request")
    missing = await _error(getattr(stub, rpc)(request_type(task_id=str(uuid.uuid4())), metadata=md))
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    for task_id in scene.all_ids:
        error = await _error(getattr(stub, rpc)(request_type(task_id=task_id), metadata=md))
        assert (error.code(), error.details()) == (missing.code(), missing.details()), task_id
    await _assert_owner_tasks_untouched(scene)


async def test_another_users_batch_is_not_found_exactly_like_a_missing_one(scene: Scene) -> None:
    stub, md = scene.intruder.stub, scene.intruder.md
    missing = await _error(stub.CancelBatch(scheduler_pb2.CancelBatchRequest(batch_id=str(uuid.uuid4())), metadata=md))
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    for batch_id in {scene.active[0].batch_id, scene.finished.batch_id}:
        error = await _error(stub.CancelBatch(scheduler_pb2.CancelBatchRequest(batch_id=batch_id), metadata=md))
        assert (error.code(), error.details()) == (missing.code(), missing.details())
    await _assert_owner_tasks_untouched(scene)


async def test_another_users_tasks_are_never_listed_or_counted(scene: Scene) -> None:
    intruder = scene.intruder
    assert await intruder.list_ids() == set()
    for status in task_pb2.TaskStatus.values():
        assert await intruder.list_ids(status=status) == set()
    assert await intruder.list_ids(batch_id=scene.active[0].batch_id) == set()
    stats = (await intruder.stub.GetStats(scheduler_pb2.GetStatsRequest(), metadata=intruder.md)).stats
    assert stats == task_pb2.TaskStats()
    owner_stats = (await scene.owner.stub.GetStats(scheduler_pb2.GetStatsRequest(), metadata=scene.owner.md)).stats
    assert (owner_stats.active, owner_stats.cancelled) == (len(scene.active), 1)

    own = await intruder.cancelled((await intruder.submit())[0].id)
    assert await intruder.list_ids() == {own.id}
    stats = (await intruder.stub.GetStats(scheduler_pb2.GetStatsRequest(), metadata=intruder.md)).stats
    assert stats == task_pb2.TaskStats(cancelled=1)


async def test_clear_history_removes_only_the_callers_finished_tasks(scene: Scene) -> None:
    intruder = scene.intruder
    own = await intruder.cancelled((await intruder.submit())[0].id)
    reply = await intruder.stub.ClearHistory(scheduler_pb2.ClearHistoryRequest(), metadata=intruder.md)
    assert reply.deleted == 1
    assert own.id not in await intruder.list_ids()
    await _assert_owner_tasks_untouched(scene)


async def test_a_request_id_is_scoped_to_its_user(scene: Scene) -> None:
    """Reusing A's idempotency key must create B's own tasks, never hand back A's."""
    request_id = f"shared-{uuid.uuid4().hex}"
    owners = await scene.owner.submit(request_id=request_id)
    try:
        intruders = await scene.intruder.submit(request_id=request_id)
        assert {t.id for t in intruders}.isdisjoint({t.id for t in owners})
        assert {t.id for t in intruders} == await scene.intruder.list_ids()
        again = await scene.owner.submit(request_id=request_id)
        assert [t.id for t in again] == [t.id for t in owners], "A's retry still finds A's own tasks"
        await scene.intruder.cancelled(intruders[0].id)
    finally:
        await scene.owner.cancelled(owners[0].id)
    await _assert_owner_tasks_untouched(scene)


async def test_list_workers_carries_nothing_of_other_users(scene: Scene) -> None:
    reply = await scene.intruder.stub.ListWorkers(scheduler_pb2.ListWorkersRequest(), metadata=scene.intruder.md)
    raw = reply.SerializeToString()
    for secret in [*scene.all_ids, scene.active[0].batch_id, scene.owner.account.user_id, scene.owner.account.email]:
        assert secret.encode() not in raw


Watch = grpc.aio.UnaryStreamCall  # type: ignore[type-arg]


def _watch(caller: Caller, resume_token: str = "") -> Watch:
    return caller.stub.WatchTasks(scheduler_pb2.WatchTasksRequest(resume_token=resume_token), metadata=caller.md)


async def _read_until(
    call: Watch, done: Callable[[scheduler_pb2.WatchTasksResponse], bool]
) -> list[scheduler_pb2.WatchTasksResponse]:
    """Messages of a watch stream up to and including the first one `done` accepts."""
    messages: list[scheduler_pb2.WatchTasksResponse] = []
    async with asyncio.timeout(60):
        while True:
            message = await call.read()
            assert message is not grpc.aio.EOF, "the watch stream ended"
            messages.append(message)
            if done(message):
                return messages


def _is_event_for(task_id: str) -> Callable[[scheduler_pb2.WatchTasksResponse], bool]:
    return lambda m: m.WhichOneof("kind") == "event" and m.event.task.id == task_id


def _assert_nothing_of(scene: Scene, messages: list[scheduler_pb2.WatchTasksResponse], extra: list[str]) -> None:
    owner = scene.owner.account
    secrets = [*scene.all_ids, *extra, scene.active[0].batch_id, owner.user_id, owner.email]
    for message in messages:
        raw = message.SerializeToString()
        leaked = [s for s in secrets if s.encode() in raw]
        assert not leaked, f"{message.WhichOneof('kind')} message carries {leaked}"


async def _intruder_barrier(intruder: Caller, call: Watch) -> list[scheduler_pb2.WatchTasksResponse]:
    """Make a change of the intruder's own and read its stream until that change arrives.

    The owner's changes were all recorded before it, so anything of theirs the stream would leak comes first.
    """
    own = (await intruder.submit())[0]
    messages = await _read_until(call, _is_event_for(own.id))
    await intruder.cancelled(own.id)
    return messages


async def test_watch_never_streams_another_users_tasks(scene: Scene) -> None:
    owner, intruder = scene.owner, scene.intruder
    owner_call, intruder_call = _watch(owner), _watch(intruder)
    try:
        owner_snapshot = await _read_until(owner_call, lambda m: m.WhichOneof("kind") == "snapshot")
        assert set(scene.all_ids) <= {t.id for t in owner_snapshot[-1].snapshot.tasks}
        seen = await _read_until(intruder_call, lambda m: m.WhichOneof("kind") == "snapshot")
        assert list(seen[-1].snapshot.tasks) == []
        assert seen[-1].snapshot.stats == task_pb2.TaskStats()

        # The owner changes tasks while the intruder watches: a new task, a cancel, a delete.
        added = (await owner.submit())[0]
        await owner.cancelled(added.id)
        await owner.stub.DeleteTask(scheduler_pb2.DeleteTaskRequest(task_id=added.id), metadata=owner.md)
        owner_events = await _read_until(owner_call, lambda m: m.event.deleted and m.event.task.id == added.id)
        assert any(_is_event_for(added.id)(m) for m in owner_events), "the owner's own stream saw the changes"

        seen += await _intruder_barrier(intruder, intruder_call)
        _assert_nothing_of(scene, seen, [added.id])
    finally:
        owner_call.cancel()
        intruder_call.cancel()


async def test_another_users_resume_token_replays_nothing_of_theirs(scene: Scene) -> None:
    owner, intruder = scene.owner, scene.intruder
    owner_call = _watch(owner)
    try:
        token = (await _read_until(owner_call, lambda m: m.WhichOneof("kind") == "snapshot"))[-1].resume_token
    finally:
        owner_call.cancel()
    added = (await owner.submit())[0]
    await owner.cancelled(added.id)

    intruder_call = _watch(intruder, resume_token=token)
    try:
        seen = await _intruder_barrier(intruder, intruder_call)
        _assert_nothing_of(scene, seen, [added.id])
    finally:
        intruder_call.cancel()
