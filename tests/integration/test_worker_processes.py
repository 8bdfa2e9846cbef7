"""Worker processes on the full stack: SIGTERM drains, and no handler process outlives a killed worker."""

from __future__ import annotations

import os
import signal

import asyncpg
import grpc
import pytest

from resilienttask.v1 import task_pb2
from services.core import keys
from services.core.config import RedisConfig
from services.core.redis_client import create_redis
from services.core.worker_registry import BUILTIN_KINDS
from services.stack.stack import Stack
from tests.conftest import TEST_RECLAIM_IDLE_MS, Stores
from tests.helpers import eventually
from tests.integration.accounts import signup
from tests.integration.tasks import UserTasks

S = task_pb2


@pytest.fixture
async def user(edge: grpc.aio.Channel) -> UserTasks:
    return UserTasks(edge, await signup(edge, "workerproc"))


def process_for(stack: Stack, worker_id: str) -> str:
    """The stack's process name (worker-N) of a worker id (worker-N-<hex>)."""
    name = "-".join(worker_id.split("-")[:2])
    assert name in stack.processes, worker_id
    return name


def handler_children(parent_pid: int) -> set[int]:
    """Live handler processes started by parent_pid."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat, open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                fields = stat.read().rsplit(")", 1)[1].split()
                command = cmdline.read()
        except OSError:
            continue
        if int(fields[1]) == parent_pid and fields[0] != "Z" and b"services.worker.child" in command:
            found.add(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def _value(value: object) -> object:
    return value


async def test_sigterm_lets_a_running_task_finish_and_report_before_the_worker_exits(
    user: UserTasks, stack: Stack
) -> None:
    (task,) = await user.submit(workload_s=1.5)
    running = await user.wait_for(task.id, [S.TASK_STATUS_RUNNING])
    name = process_for(stack, running.worker_id)
    process = stack.processes[name]
    try:
        process.signal(signal.SIGTERM)
        done = await user.wait_for(task.id)
        assert done.status == S.TASK_STATUS_SUCCEEDED
        assert done.attempt == 1 and done.worker_id == running.worker_id, "finished by the draining worker"
        await eventually(lambda: _value(not process.alive()), message="worker exited after draining")
        assert process.wait(1) == 0
    finally:
        stack.restart(name)


async def test_a_killed_workers_handler_process_dies_with_it(user: UserTasks, stack: Stack) -> None:
    (task,) = await user.submit("spin", workload_s=600, max_runtime_s=600)
    running = await user.wait_for(task.id, [S.TASK_STATUS_RUNNING])
    name = process_for(stack, running.worker_id)
    worker_pid = stack.processes[name].pid
    (child,) = await eventually(lambda: _value(handler_children(worker_pid)), message="spin child process")
    stack.processes[name].kill()
    try:
        # The child is in its own process group (the group kill missed it); it sees its stdin close and exits.
        await eventually(lambda: _value(not alive(child)), message="orphaned handler process gone")

        async def reclaimed_elsewhere() -> task_pb2.Task | None:
            current = await user.get(task.id)
            return current if current.attempt >= 2 and current.status == S.TASK_STATUS_RUNNING else None

        reclaimed = await eventually(reclaimed_elsewhere, timeout_s=60, message="new attempt on another worker")
        assert reclaimed.worker_id != running.worker_id
    finally:
        stack.restart(name)
        await user.cancel(task.id)
    done = await user.wait_for(task.id)
    assert done.status == S.TASK_STATUS_CANCELLED and "killed after" in done.error, done.error


async def test_workers_ride_out_a_scheduler_restart(user: UserTasks, stack: Stack) -> None:
    (short,) = await user.submit(workload_s=2)
    (long,) = await user.submit(workload_s=600)
    await user.wait_for(short.id, [S.TASK_STATUS_RUNNING])
    await user.wait_for(long.id, [S.TASK_STATUS_RUNNING])
    (scheduler,) = stack.names("scheduler")
    stack.processes[scheduler].kill()
    try:
        (queued,) = await user.submit(workload_s=0.1)  # read by a worker while nobody can start it
    finally:
        stack.restart(scheduler)
    done = await user.wait_for(short.id, timeout_s=60)
    assert done.status == S.TASK_STATUS_SUCCEEDED and done.attempt == 1, "its outcome was retried, not lost"
    assert (await user.wait_for(queued.id, timeout_s=60)).status == S.TASK_STATUS_SUCCEEDED
    # The workers reconnected: a cancel is pushed down the new stream.
    await user.cancel(long.id)
    cancelled = await user.wait_for(long.id, timeout_s=30)
    assert cancelled.status == S.TASK_STATUS_CANCELLED and cancelled.attempt == 1, cancelled


async def test_a_frozen_workers_task_is_reclaimed_and_its_late_report_is_refused(
    user: UserTasks, stack: Stack, stores: Stores
) -> None:
    (task,) = await user.submit(workload_s=TEST_RECLAIM_IDLE_MS / 1000 + 3)
    first = await user.wait_for(task.id, [S.TASK_STATUS_RUNNING])
    name = process_for(stack, first.worker_id)
    process = stack.processes[name]
    process.signal(signal.SIGSTOP)  # alive but silent: no heartbeats, no entry refresh
    try:

        async def taken_over() -> task_pb2.Task | None:
            current = await user.get(task.id)
            return current if current.attempt == 2 else None

        second = await eventually(taken_over, timeout_s=60, message="reclaimed by another worker")
        assert second.worker_id != first.worker_id
    finally:
        process.signal(signal.SIGCONT)
    done = await user.wait_for(task.id, timeout_s=60)
    assert done.status == S.TASK_STATUS_SUCCEEDED
    assert done.attempt == 2 and done.worker_id == second.worker_id, "the thawed worker's report was refused"
    conn = await asyncpg.connect(stores.database_url)
    try:
        finishes = await conn.fetchval(
            "SELECT count(*) FROM task_history WHERE task_id = $1 AND to_status = $2",
            task.id,
            S.TASK_STATUS_SUCCEEDED,
        )
        pending = await _pending_entries(stores, task.id)
    finally:
        await conn.close()
    assert finishes == 1
    assert process.alive(), "the thawed worker carries on"
    assert not pending, "the entry was acknowledged once the new attempt's outcome was stored"


async def _pending_entries(stores: Stores, task_id: str) -> list[str]:
    """Pending dispatch entries (of any consumer) that carry task_id."""
    client = create_redis(RedisConfig(stores.redis_url))
    try:
        found = []
        for kind in BUILTIN_KINDS:
            stream = keys.dispatch_stream(kind)
            rows = await client.xpending_range(stream, keys.DISPATCH_GROUP, "-", "+", 10_000)
            for row in rows:
                for entry_id, fields in await client.xrange(stream, row["message_id"], row["message_id"]):
                    if fields.get(keys.FIELD_TASK_ID.encode()) == task_id.encode():
                        found.append(entry_id.decode())
        return found
    finally:
        await client.aclose()
