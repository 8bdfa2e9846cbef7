"""The heart of the product, through Envoy on the full stack: submit, dispatch, run, cancel, time out,
reclaim, retry — and nothing lost or run twice.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid

import asyncpg
import grpc
import pytest
from redis.exceptions import RedisError

from resilienttask.v1 import scheduler_pb2, task_pb2
from services.core.task_model import TERMINAL
from services.stack.processes import ManagedProcess
from services.stack.stack import Stack
from tests.conftest import TEST_RECLAIM_IDLE_MS, Stores, admin_redis
from tests.helpers import eventually
from tests.integration.accounts import signup
from tests.integration.tasks import UserTasks, duration
from tests.stack_health import wait_settled

S = task_pb2


@pytest.fixture
async def user(edge: grpc.aio.Channel) -> UserTasks:
    return UserTasks(edge, await signup(edge, "life"))


def process_for(stack: Stack, worker_id: str) -> str:
    """The stack's process name (worker-N) of a worker id (worker-N-<hex>)."""
    name = "-".join(worker_id.split("-")[:2])
    assert name in stack.processes, worker_id
    return name


async def test_fifty_replicas_all_succeed_spread_over_several_workers(user: UserTasks) -> None:
    started = time.monotonic()
    tasks = await user.submit(workload_s=0.5, replicas=50)
    submit_s = time.monotonic() - started
    assert len(tasks) == 50 and len({t.batch_id for t in tasks}) == 1
    assert [t.replica_index for t in tasks] == list(range(50))
    assert all(t.status == S.TASK_STATUS_QUEUED for t in tasks)
    done = await asyncio.gather(*(user.wait_for(t.id) for t in tasks))
    assert {t.status for t in done} == {S.TASK_STATUS_SUCCEEDED}
    assert all(t.attempt == 1 and t.progress == 1.0 for t in done)
    assert len({t.worker_id for t in done}) > 1
    print(f"\n50-replica submit took {submit_s * 1000:.1f} ms; all done after {time.monotonic() - started:.2f} s")


async def test_resubmitting_the_same_request_id_returns_the_same_tasks(user: UserTasks) -> None:
    request_id = str(uuid.uuid4())
    first = await user.submit(replicas=3, request_id=request_id)
    again = await user.submit(replicas=3, request_id=request_id)
    assert [t.id for t in again] == [t.id for t in first]
    shared = str(uuid.uuid4())
    concurrent = await asyncio.gather(*(user.submit(replicas=5, request_id=shared) for _ in range(4)))
    assert len({tuple(t.id for t in batch) for batch in concurrent}) == 1
    listed = await user.stub.ListTasks(scheduler_pb2.ListTasksRequest(page_size=100), metadata=user.account.metadata)
    assert len(listed.tasks) == 8, "no duplicates were created"


async def test_a_reused_request_id_with_more_replicas_adds_nothing(user: UserTasks) -> None:
    """Replicas 0-1 exist, 2-4 would be new: the whole statement is refused and the first request's rows return."""
    request_id = str(uuid.uuid4())
    first = await user.submit(replicas=2, request_id=request_id, workload_s=60)
    again = await user.submit(replicas=5, request_id=request_id, workload_s=60)
    assert [t.id for t in again] == [t.id for t in first]
    listed = await user.stub.ListTasks(scheduler_pb2.ListTasksRequest(page_size=100), metadata=user.account.metadata)
    assert len(listed.tasks) == 2, "no replica of the repeated request was kept"
    for task in first:
        await user.cancel(task.id)


async def test_cancel_of_a_running_task_stops_it_cooperatively(user: UserTasks) -> None:
    (task,) = await user.submit(workload_s=60)
    await user.wait_for(task.id, [S.TASK_STATUS_RUNNING])
    started = time.monotonic()
    reply = await user.cancel(task.id)
    assert reply.status in (S.TASK_STATUS_CANCELLING, S.TASK_STATUS_CANCELLED)
    done = await user.wait_for(task.id)
    seen_ms = (time.monotonic() - started) * 1000
    assert done.status == S.TASK_STATUS_CANCELLED
    assert "cooperative" in done.error, done.error
    print(f"\ncancel → CANCELLED seen by a polling client after {seen_ms:.1f} ms ({done.error})")
    again = await user.cancel(task.id)
    assert again.status == S.TASK_STATUS_CANCELLED, "cancelling twice is harmless"


async def test_cancel_of_queued_tasks_and_of_a_whole_batch(user: UserTasks, stack: Stack) -> None:
    slots = stack.config.workers * stack.config.worker_slots
    tasks = await user.submit(workload_s=120, replicas=min(50, slots + 10))
    try:

        async def a_queued_one() -> task_pb2.Task | None:
            listed = await user.stub.ListTasks(
                scheduler_pb2.ListTasksRequest(status=S.TASK_STATUS_QUEUED, batch_id=tasks[0].batch_id),
                metadata=user.account.metadata,
            )
            running = await user.stub.ListTasks(
                scheduler_pb2.ListTasksRequest(status=S.TASK_STATUS_RUNNING, batch_id=tasks[0].batch_id),
                metadata=user.account.metadata,
            )
            return listed.tasks[0] if listed.tasks and running.tasks else None

        # A worker may start the listed task just before the cancel lands (then it is CANCELLING): try another.
        async def cancelled_while_queued() -> task_pb2.Task | None:
            queued = await eventually(a_queued_one, message="some replicas running, some queued")
            reply = await user.cancel(queued.id)
            return reply if reply.status == S.TASK_STATUS_CANCELLED else None

        cancelled = await eventually(cancelled_while_queued, message="a queued task cancelled at once")
        assert cancelled.finished_at.seconds > 0 and "queued" in cancelled.error
    finally:
        batch = await user.cancel_batch(tasks[0].batch_id)
    assert {t.status for t in batch} <= {S.TASK_STATUS_CANCELLED, S.TASK_STATUS_CANCELLING}
    finished = await asyncio.gather(*(user.wait_for(t.id) for t in tasks))
    assert {t.status for t in finished} == {S.TASK_STATUS_CANCELLED}


async def test_cancelling_a_finished_task_is_a_failed_precondition(user: UserTasks) -> None:
    (task,) = await user.submit(workload_s=0)
    await user.wait_for(task.id)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await user.cancel(task.id)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def _spin_children() -> set[int]:
    found = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                cmdline = handle.read()
        except OSError:
            continue
        if b"services.worker.child" in cmdline or b"spawn_main" in cmdline:
            found.add(int(pid))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


async def test_spin_is_killed_at_max_runtime_and_its_process_is_gone(user: UserTasks) -> None:
    before = _spin_children()
    (task,) = await user.submit("spin", workload_s=600, max_runtime_s=1.5)
    await user.wait_for(task.id, [S.TASK_STATUS_RUNNING])

    async def child() -> set[int]:
        return _spin_children() - before

    children = await eventually(child, message="spin runs in a child process")
    done = await user.wait_for(task.id)
    assert done.status == S.TASK_STATUS_TIMED_OUT, done
    runtime = done.finished_at.ToDatetime() - done.started_at.ToDatetime()
    assert runtime.total_seconds() >= 1.5
    assert not any(_alive(pid) for pid in children), "the child process was killed and reaped"


async def test_spin_is_killed_on_cancel_after_the_grace(user: UserTasks) -> None:
    (task,) = await user.submit("spin", workload_s=600, max_runtime_s=600)
    await user.wait_for(task.id, [S.TASK_STATUS_RUNNING])
    await user.cancel(task.id)
    done = await user.wait_for(task.id)
    assert done.status == S.TASK_STATUS_CANCELLED
    assert "kill" in done.error, done.error


async def test_priority_and_concurrency_key_are_stored_and_returned(user: UserTasks) -> None:
    request = scheduler_pb2.SubmitTaskRequest(
        name="keyed", priority=5, concurrency_key="customer-7", concurrency_limit=2, replicas=2
    )
    submitted = await user.stub.SubmitTask(request, metadata=user.account.metadata)
    assert {(t.priority, t.concurrency_key, t.concurrency_limit) for t in submitted.tasks} == {(5, "customer-7", 2)}
    (plain,) = await user.submit(workload_s=0)
    assert (plain.priority, plain.concurrency_key, plain.concurrency_limit) == (3, "", 0)
    done = await user.wait_for(submitted.tasks[0].id)
    assert (done.priority, done.concurrency_key, done.concurrency_limit) == (5, "customer-7", 2)


async def test_fail_is_retried_then_dead_lettered_then_retried_by_hand(user: UserTasks) -> None:
    (task,) = await user.submit("fail", workload_s=0, max_attempts=2)
    done = await user.wait_for(task.id, [S.TASK_STATUS_FAILED], timeout_s=60)
    assert done.attempt == 2 and done.dead_lettered and done.error
    retried = await user.stub.RetryTask(scheduler_pb2.RetryTaskRequest(task_id=task.id), metadata=user.account.metadata)
    assert retried.task.status == S.TASK_STATUS_QUEUED and not retried.task.dead_lettered
    again = await user.wait_for(task.id, [S.TASK_STATUS_FAILED], timeout_s=60)
    assert again.attempt == 2 and again.dead_lettered and again.version > done.version
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        (ok,) = await user.submit(workload_s=0)
        await user.wait_for(ok.id)
        await user.stub.RetryTask(scheduler_pb2.RetryTaskRequest(task_id=ok.id), metadata=user.account.metadata)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_killed_workers_task_finishes_elsewhere_as_a_new_attempt(user: UserTasks, stack: Stack) -> None:
    (task,) = await user.submit(workload_s=4)
    running = await user.wait_for(task.id, [S.TASK_STATUS_RUNNING])
    victim = process_for(stack, running.worker_id)
    stack.processes[victim].kill()
    try:
        done = await user.wait_for(task.id, timeout_s=60)
        assert done.status == S.TASK_STATUS_SUCCEEDED
        assert done.attempt == 2 and done.worker_id != running.worker_id
    finally:
        stack.restart(victim)


async def test_a_healthy_long_task_is_never_reclaimed(user: UserTasks, stores: Stores) -> None:
    (task,) = await user.submit(workload_s=3 * TEST_RECLAIM_IDLE_MS / 1000 + 1)
    done = await user.wait_for(task.id, timeout_s=60)
    assert done.status == S.TASK_STATUS_SUCCEEDED and done.attempt == 1
    conn = await asyncpg.connect(stores.database_url)
    try:
        starts = await conn.fetchval(
            "SELECT count(*) FROM task_history WHERE task_id = $1 AND to_status = $2", task.id, S.TASK_STATUS_RUNNING
        )
    finally:
        await conn.close()
    assert starts == 1


async def _restart_valkey(stores: Stores) -> None:
    old = stores.valkey
    old.stop(sig=signal.SIGTERM)  # a clean stop writes the AOF
    fresh = ManagedProcess("valkey", old.argv, log_dir=old.log_path.parent)
    fresh.start()
    stores.valkey = fresh

    async def answering() -> bool:  # accepting connections, and done loading its AOF (LOADING until then)
        client = admin_redis(stores)
        try:
            return bool(await client.ping())
        except (RedisError, OSError):
            return False
        finally:
            await client.aclose()

    await eventually(answering, timeout_s=60, interval_s=0.1, message="Valkey answers again")


@pytest.mark.usefixtures("single_redis")
async def test_restarting_redis_with_tasks_queued_loses_none(user: UserTasks, stack: Stack, stores: Stores) -> None:
    queued = await user.submit(workload_s=0.3, replicas=40)
    await _restart_valkey(stores)
    # Services report NOT_SERVING while Redis is away (and for a probe or two after): wait until every one serves
    # again and Envoy routes to it, which the next tests need too.
    await asyncio.to_thread(wait_settled, stack)
    later = await user.submit(workload_s=0.3, replicas=5)
    finished = await asyncio.gather(*(user.wait_for(t.id, timeout_s=60) for t in [*queued, *later]))
    assert {t.status for t in finished} == {S.TASK_STATUS_SUCCEEDED}
    assert {t.attempt for t in finished} == {1}


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"kind": "no-such-kind"}, "kind"),
        ({"replicas": 51}, "replicas"),
        ({"replicas": -1}, "replicas"),
        ({"max_attempts": 11}, "max_attempts"),
        ({"max_attempts": -2}, "max_attempts"),
        ({"workload": duration(24 * 3600 + 1)}, "workload"),
        ({"workload": duration(-1)}, "workload"),
        ({"max_runtime": duration(0.5)}, "max_runtime"),
        ({"max_runtime": duration(24 * 3600 + 1)}, "max_runtime"),
        ({"request_id": "r" * 129}, "request_id"),
        ({"priority": 6}, "priority"),
        ({"priority": -1}, "priority"),
        ({"concurrency_key": "customer-1"}, "concurrency_limit"),
        ({"concurrency_key": "customer-1", "concurrency_limit": 1001}, "concurrency_limit"),
        ({"concurrency_limit": 2}, "concurrency_limit"),
        ({"concurrency_key": "k" * 129, "concurrency_limit": 2}, "concurrency_key"),
        ({"concurrency_key": "line\nbreak", "concurrency_limit": 2}, "concurrency_key"),
    ],
)
async def test_bad_submissions_name_the_field_and_store_nothing(
    user: UserTasks, changes: dict[str, object], field: str
) -> None:
    request = scheduler_pb2.SubmitTaskRequest(name="ok", kind="sleep")
    for key, value in changes.items():
        if isinstance(value, type(duration(0))):
            getattr(request, key).CopyFrom(value)
        else:
            setattr(request, key, value)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await user.stub.SubmitTask(request, metadata=user.account.metadata)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith(field), refused.value.details()
    listed = await user.stub.ListTasks(scheduler_pb2.ListTasksRequest(), metadata=user.account.metadata)
    assert not listed.tasks


async def test_oversized_payload_is_refused(user: UserTasks) -> None:
    request = scheduler_pb2.SubmitTaskRequest(name="big", kind="sleep")
    request.payload.update({"blob": "x" * (65 * 1024)})
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await user.stub.SubmitTask(request, metadata=user.account.metadata)
    assert refused.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
async def test_non_finite_payload_numbers_are_invalid_and_store_nothing(user: UserTasks, number: float) -> None:
    request = scheduler_pb2.SubmitTaskRequest(name="nan", kind="sleep")
    request.payload.update({"ok": 1, "nested": {"list": [0.5, number]}})
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await user.stub.SubmitTask(request, metadata=user.account.metadata)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith("payload") and "finite" in refused.value.details()
    listed = await user.stub.ListTasks(scheduler_pb2.ListTasksRequest(), metadata=user.account.metadata)
    assert not listed.tasks


async def test_unknown_kind_error_lists_the_kinds(user: UserTasks) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await user.submit("nope")
    assert "sleep" in refused.value.details() and "spin" in refused.value.details()


@pytest.mark.parametrize("rpc", ["GetTask", "CancelTask", "DeleteTask", "RetryTask"])
async def test_malformed_and_unknown_task_ids(user: UserTasks, rpc: str) -> None:
    request_type = getattr(scheduler_pb2, f"{rpc}Request")
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await getattr(user.stub, rpc)(request_type(task_id="not-a-uuid"), metadata=user.account.metadata)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "task_id" in bad.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await getattr(user.stub, rpc)(request_type(task_id=str(uuid.uuid4())), metadata=user.account.metadata)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_list_pages_stats_delete_and_clear_history(user: UserTasks) -> None:
    tasks = await user.submit(workload_s=0, replicas=7)
    await asyncio.gather(*(user.wait_for(t.id) for t in tasks))
    seen: list[str] = []
    token = ""
    while True:
        page = await user.stub.ListTasks(
            scheduler_pb2.ListTasksRequest(page_size=3, page_token=token), metadata=user.account.metadata
        )
        seen += [t.id for t in page.tasks]
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted(t.id for t in tasks)
    stats = (await user.stub.GetStats(scheduler_pb2.GetStatsRequest(), metadata=user.account.metadata)).stats
    assert stats.succeeded == 7 and stats.active == 0
    await user.stub.DeleteTask(scheduler_pb2.DeleteTaskRequest(task_id=tasks[0].id), metadata=user.account.metadata)
    (running,) = await user.submit(workload_s=60)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await user.stub.DeleteTask(scheduler_pb2.DeleteTaskRequest(task_id=running.id), metadata=user.account.metadata)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    cleared = await user.stub.ClearHistory(scheduler_pb2.ClearHistoryRequest(), metadata=user.account.metadata)
    assert cleared.deleted == 6
    left = await user.stub.ListTasks(scheduler_pb2.ListTasksRequest(), metadata=user.account.metadata)
    assert [t.id for t in left.tasks] == [running.id]
    await user.cancel(running.id)
    assert (await user.wait_for(running.id)).status in TERMINAL
    with pytest.raises(grpc.aio.AioRpcError) as bad_token:
        await user.stub.ListTasks(scheduler_pb2.ListTasksRequest(page_token="%%%"), metadata=user.account.metadata)
    assert bad_token.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_workers_and_kinds_are_listed(user: UserTasks, stack: Stack) -> None:
    workers = await user.stub.ListWorkers(scheduler_pb2.ListWorkersRequest(), metadata=user.account.metadata)
    assert len(workers.workers) >= stack.config.workers
    assert all(w.slots == stack.config.worker_slots for w in workers.workers)
    kinds = await user.stub.ListKinds(scheduler_pb2.ListKindsRequest(), metadata=user.account.metadata)
    assert {"sleep", "fail", "spin"} <= set(kinds.kinds)
