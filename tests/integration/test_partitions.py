"""Network partitions on the real stack: links that stall (both ends keep running, nothing is closed), then heal.

The stack of tests/integration/partitioned_stack.py, its timings scaled down (production keeps 10 s / 1 s / 30 s /
500 ms / 15 s) so a partition plays out in seconds. The task bodies record their own runs: the runs of one task on
different workers never overlap, whichever link stalls, and once the link heals every task ends exactly once, in
one terminal state (counted in its committed history). tests/chaos/test_partitions.py plays the worker cases
with the production timings.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator

import grpc
import pytest
import redis.asyncio as aioredis

from resilienttask import AsyncClient, Task, TaskStatus
from resilienttask.v1 import scheduler_pb2, scheduler_pb2_grpc
from resilienttask.worker.v1 import worker_pb2, worker_pb2_grpc
from services.core import keys
from tests.conftest import Stores, unique_email
from tests.helpers import eventually
from tests.integration.partition_handler import KIND, STUBBORN_KIND
from tests.integration.partitioned_stack import (
    Partitioned,
    cut_worker_off,
    ended_once,
    healthy,
    partitioned_stack,
    runs_of,
    submit,
    value,
)
from tests.integration.test_user_limits import on_database

REDIS_DB = 14
# The fence margin is the default: max(30 % of 3 s, cancel grace + 250 ms) = 900 ms.
TIMINGS = {
    "RTASK_WORKER_RECLAIM_IDLE_MS": "3000",
    "RTASK_WORKER_HEARTBEAT_MS": "500",
    "RTASK_WORKER_OUTAGE_GRACE_MS": "1500",
    "RTASK_WORKER_CANCEL_GRACE_MS": "300",
    "RTASK_DB_COMMAND_TIMEOUT_MS": "2000",
    "RTASK_DB_CONNECT_TIMEOUT_MS": "2000",
}
# Far longer than a partition plays out (the first attempt must still run when its worker fences itself): the
# tasks are cancelled once taken over.
WORKLOAD_S = 60.0
PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def partitioned(
    stores: Stores, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Partitioned]:
    echo = sys.stderr if request.config.getoption("--keep-logs") else None
    with partitioned_stack(stores, tmp_path_factory.mktemp("partition-stack"), REDIS_DB, TIMINGS, echo) as running:
        yield running


@pytest.fixture
async def user(partitioned: Partitioned) -> AsyncIterator[AsyncClient]:
    partitioned.proxies.resume_all()  # whatever a failed test left stalled
    async with AsyncClient(partitioned.stack.edge_address) as sdk:
        await sdk.signup(unique_email("partition"), PASSWORD)
        yield sdk


# -- a worker cut off ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cut", "kind"),
    [("scheduler", KIND), ("redis", KIND), ("both", KIND), ("both", STUBBORN_KIND)],
    ids=["worker-scheduler", "worker-redis", "worker-both", "worker-both-stubborn-handler"],
)
async def test_a_worker_cut_off_stops_its_handler_before_its_task_runs_elsewhere(
    user: AsyncClient, partitioned: Partitioned, cut: str, kind: str
) -> None:
    takeover = await cut_worker_off(user, partitioned, cut, kind, WORKLOAD_S, cancel=True)
    print(f"\n{takeover}")


async def test_a_worker_that_reaches_redis_but_not_the_scheduler_leaves_reclaimable_work_to_others(
    user: AsyncClient, partitioned: Partitioned, stores: Stores
) -> None:
    """Worker A still reaches Redis but no scheduler: it must not reclaim an abandoned entry (it could not start
    it, only hold it, refreshing its idle time, until the link healed). Worker B takes it once it is idle."""
    a, b = (partitioned.stack.processes[name] for name in ("worker-1", "worker-2"))
    partitioned.links["worker-1-scheduler"].stall()
    redis = aioredis.from_url(on_database(stores.redis_access, REDIS_DB).admin.url_with_password())  # type: ignore[union-attr]
    try:
        await eventually(lambda: _not(healthy(partitioned.stack.address("worker-1"))), message="A out of contact")
        # An entry a worker read and then died with: B's Redis link stalls a moment, so the dead one reads it first.
        partitioned.links["worker-2-redis"].stall()
        try:
            # B's blocked read, sent before the stall, has to end first, or it takes the entry: ended at once here
            # (CLIENT UNBLOCK) rather than after its block time, which a loaded machine can stretch past the wait.
            await eventually(lambda: _none_blocked(redis, REDIS_DB), message="no worker's read waits in Redis")
            task = await submit(user, partitioned, KIND, 0.2)
            stream = keys.dispatch_stream(KIND)
            taken = await redis.xreadgroup(keys.DISPATCH_GROUP, "dead-worker", {stream: ">"}, count=10, block=5000)
            assert taken, "the dead worker read the entry"
        finally:
            partitioned.links["worker-2-redis"].resume()
        await ended_once(user, partitioned, [task])
        (run,) = runs_of(partitioned, task.id)
        assert run.pid == b.pid, "B ran it"
        consumer = a.env["RTASK_WORKER_ID"]
        assert not await redis.xpending_range(stream, keys.DISPATCH_GROUP, "-", "+", 10, consumer), "A holds nothing"
    finally:
        partitioned.links["worker-1-scheduler"].resume()
        await redis.aclose()
    await eventually(lambda: healthy(partitioned.stack.address("worker-1")), timeout_s=30, message="A back")


async def _none_blocked(redis: aioredis.Redis, db: int) -> bool:
    """True when no read of this stack's streams waits in Redis; a waiting one is ended (its reply stays in the
    stalled link). Only the reads on the stack's own database number count: the server is the session's, and the
    workers of other stacks on it (the session's stack, started by an earlier module) are always blocked in a read
    of their own database, which cannot take this entry (ended, they read again at once: never "none")."""
    clients = await redis.client_list()
    blocked = [c for c in clients if c["cmd"] == "xreadgroup" and "b" in c["flags"] and int(c["db"]) == db]
    for client in blocked:
        await redis.execute_command("CLIENT", "UNBLOCK", client["id"])
    return not blocked


# -- services cut off from PostgreSQL --------------------------------------------------------------------------
async def test_a_gateway_cut_off_from_postgresql_answers_unavailable_and_recovers(
    user: AsyncClient, partitioned: Partitioned
) -> None:
    running = await submit(user, partitioned, KIND, 3.0)
    await eventually(lambda: value(runs_of(partitioned, running.id)), message="a task runs")
    link = partitioned.links["gateway-pg"]
    metadata = (("authorization", f"Bearer {user.token}"),)
    link.stall()
    try:
        for address in (partitioned.stack.address("gateway-1"), partitioned.stack.edge_address):
            async with grpc.aio.insecure_channel(address) as channel:
                stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
                calls = [
                    lambda stub=stub: stub.GetTask(
                        scheduler_pb2.GetTaskRequest(task_id=running.id), metadata=metadata, timeout=20
                    ),
                    lambda stub=stub: stub.SubmitTask(
                        scheduler_pb2.SubmitTaskRequest(name="x", kind="sleep", request_id=str(uuid.uuid4())),
                        metadata=metadata,
                        timeout=20,
                    ),
                ]
                for call in calls:
                    with pytest.raises(grpc.aio.AioRpcError) as raised:
                        await call()
                    # Bounded by the statement and connect timeouts (2 s here), far inside the 20 s deadline.
                    assert raised.value.code() is grpc.StatusCode.UNAVAILABLE, raised.value
        # Meanwhile the scheduler and the workers, which reach PostgreSQL, finish the running task.
        await eventually(
            lambda: value(_done_running(partitioned, running.id)), timeout_s=30, message="the task body ended"
        )
    finally:
        link.resume()
    # Healed: the same calls succeed (through the edge), and new work runs.
    after = await eventually(lambda: _answers(user, running.id), timeout_s=30, message="the gateway answers again")
    assert after.status is TaskStatus.SUCCEEDED
    fresh = await submit(user, partitioned, KIND, 0.1)
    await ended_once(user, partitioned, [running, fresh])


def _done_running(partitioned: Partitioned, task_id: str) -> bool:
    found = runs_of(partitioned, task_id)
    return bool(found) and found[-1].end < time.time() - 0.5


async def _answers(user: AsyncClient, task_id: str) -> Task | None:
    try:
        task = await user.get(task_id, timeout=5)
    except Exception:  # still recovering: UNAVAILABLE, retried
        return None
    return task if task.status in {TaskStatus.SUCCEEDED, TaskStatus.FAILED} else None


async def test_a_scheduler_cut_off_from_postgresql_holds_work_back_and_recovers(
    user: AsyncClient, partitioned: Partitioned
) -> None:
    running = await submit(user, partitioned, KIND, 3.0)
    await eventually(lambda: value(runs_of(partitioned, running.id)), message="a task runs")
    link = partitioned.links["scheduler-pg"]
    scheduler = partitioned.stack.address("scheduler-1")
    link.stall()
    try:
        # Its readiness probe is bounded too: the scheduler says it cannot serve, it does not hang.
        await eventually(lambda: _not(healthy(scheduler)), timeout_s=20, message="scheduler NOT_SERVING")
        # A worker enrolling meanwhile (its identity is recorded in PostgreSQL) is told to come back.
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await _enrol(partitioned, scheduler)
        # Bounded by the statement and connect timeouts (2 s here), far inside the client's 20 s deadline.
        assert raised.value.code() is grpc.StatusCode.UNAVAILABLE, raised.value
        # Submitted meanwhile (the gateway reaches PostgreSQL): dispatched, but no start can be recorded.
        waiting = await submit(user, partitioned, KIND, 0.1)
        await eventually(
            lambda: value(_done_running(partitioned, running.id)), timeout_s=30, message="the running body ended"
        )
        assert not runs_of(partitioned, waiting.id), "no task starts while its start cannot be committed"
        assert (await user.get(running.id)).status is TaskStatus.RUNNING, "its outcome waits for the database"
    finally:
        link.resume()
    await eventually(lambda: healthy(scheduler), timeout_s=30, message="scheduler SERVING again")
    assert (await _enrol(partitioned, scheduler)).token, "a worker enrols once the link heals"
    await ended_once(user, partitioned, [running, waiting])
    assert len(runs_of(partitioned, running.id)) == 1 and len(runs_of(partitioned, waiting.id)) == 1


async def _enrol(partitioned: Partitioned, scheduler: str) -> worker_pb2.EnrolResponse:
    secret = partitioned.stack.enrolment_secret.decode()
    async with grpc.aio.insecure_channel(scheduler) as channel:
        reply: worker_pb2.EnrolResponse = await worker_pb2_grpc.WorkerServiceStub(channel).Enrol(
            worker_pb2.EnrolRequest(worker_id=f"enrolling-{uuid.uuid4().hex[:6]}"),
            metadata=(("authorization", f"Bearer {secret}"),),
            timeout=20,
        )
        return reply


async def _not(probe: Awaitable[bool]) -> bool:
    return not await probe
