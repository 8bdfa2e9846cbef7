"""Change events are summaries: bounded in size in Redis and on the wire, and never carry payload or result.

The full stack with its real workers: a task with a 64 KiB payload and a 60 KiB result (tests/integration/
bulky_handler.py), the raw entries of the owner's stream and of the feed read back from Redis, a watcher that
sees every transition, and the SDK's wait() that still returns the result.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import grpc
import pytest
import redis.asyncio as aioredis

from resilienttask import AsyncClient, TaskStatus
from resilienttask.v1 import scheduler_pb2, task_pb2
from services.core import events, keys
from services.core.task_summary import ERROR_BYTES, MAX_SUMMARY_BYTES
from services.core.validation import MAX_PAYLOAD_BYTES
from services.stack.stack import Stack
from tests.conftest import Stores, unique_email
from tests.helpers import eventually
from tests.integration import bulky_handler
from tests.integration.accounts import PASSWORD, Account
from tests.integration.watching import Watch
from tests.widest import widest_task

# A payload as large as SubmitTask takes: one string of the marker, short of the limit by the encoding's overhead.
PAYLOAD_FILL_BYTES = MAX_PAYLOAD_BYTES - 256
# Replicas whose 64 KiB payloads add up past gRPC's default 4 MiB message limit, which a snapshot of whole
# tasks would exceed: the snapshot (summaries) must still arrive.
SNAPSHOT_TASKS = 100
FEED_SCAN = 5_000
# Valkey's stream-node-max-entries (default): approximate trimming leaves at most one node beyond a cap.
STREAM_NODE_ENTRIES = 100


@pytest.fixture
async def user(stack: Stack) -> AsyncIterator[tuple[AsyncClient, Account]]:
    async with AsyncClient(stack.edge_address) as client:
        session = await client.signup(unique_email("small-events"), PASSWORD)
        yield client, Account(session.user.id, session.user.email, PASSWORD, session.token)


def _entry_bytes(fields: dict[bytes, bytes]) -> int:
    return sum(len(name) + len(value) for name, value in fields.items())


async def _owner_entries(redis: aioredis.Redis, owner: str) -> list[dict[bytes, bytes]]:
    return [fields for _, fields in await redis.xrange(keys.owner_events_stream(owner))]


async def _stored_tasks(redis: aioredis.Redis, owner: str) -> list[task_pb2.Task]:
    """The tasks of the owner's stream, oldest entry first."""
    return [task_pb2.Task.FromString(fields[b"task"]) for fields in await _owner_entries(redis, owner)]


async def _feed_entries(redis: aioredis.Redis, owner: str) -> list[dict[bytes, bytes]]:
    entries = await redis.xrevrange(keys.EVENTS_FEED_STREAM, count=FEED_SCAN)
    return [fields for _, fields in entries if fields[b"owner"] == owner.encode()]


def _check_small(entries: list[dict[bytes, bytes]], needles: list[bytes]) -> None:
    for fields in entries:
        assert _entry_bytes(fields) <= events.MAX_ENTRY_BYTES, f"an entry of {_entry_bytes(fields)} bytes"
        task = task_pb2.Task.FromString(fields[b"task"])
        assert task.summary and not task.HasField("payload") and not task.HasField("result")
        assert task.ByteSize() <= MAX_SUMMARY_BYTES
        for needle in needles:
            assert all(needle not in value for value in fields.values()), "payload or result bytes in an event"


async def _submit_bulky(client: AsyncClient, marker: str, result_marker: str) -> str:
    fill = (marker * (PAYLOAD_FILL_BYTES // len(marker)))[:PAYLOAD_FILL_BYTES]
    payload = {"marker": marker, "result_marker": result_marker, "fill": fill}
    (task,) = await client.submit("bulky", kind=bulky_handler.KIND, payload=payload, max_attempts=1)
    assert task.payload == payload, "SubmitTask still answers with the whole task"
    return task.id


async def test_events_of_a_task_with_a_large_payload_and_result_are_small(
    user: tuple[AsyncClient, Account], redis: aioredis.Redis, edge: grpc.aio.Channel
) -> None:
    client, account = user
    await eventually(lambda: _kind_served(client), message="the bulky kind is served", timeout_s=60)
    watch = Watch(edge, account)
    try:
        await watch.next(("snapshot",))
        marker, result_marker = f"payload-{uuid.uuid4().hex}", f"result-{uuid.uuid4().hex}"
        task_id = await _submit_bulky(client, marker, result_marker)
        (done,) = await client.wait(task_id, timeout=60)
        # wait() returns the whole task, fetched with GetTask: the events it watched carry no result.
        assert done.status is TaskStatus.SUCCEEDED and not done.summary, done.error
        assert done.result["blob"].startswith(result_marker) and len(done.result["blob"]) > 50_000
        assert done.payload["marker"] == marker

        # The watcher saw every event stored for the task (a progress event may be appended after a later
        # transition's: the owner's stream and the watcher agree on the order), each a small summary.
        seen: list[scheduler_pb2.WatchTasksResponse] = []

        async def watched_all_stored() -> bool:
            stored = [t.version for t in await _stored_tasks(redis, account.user_id) if t.id == task_id]
            while len([m for m in seen if m.event.task.id == task_id]) < len(stored):
                seen.append(await watch.next(("event",)))
            return (
                done.version in stored and [m.event.task.version for m in seen if m.event.task.id == task_id] == stored
            )

        await eventually(watched_all_stored, message="the watcher saw every stored event")
        mine = sorted((m.event.task for m in seen if m.event.task.id == task_id), key=lambda t: t.version)
        assert all(t.summary and not t.HasField("payload") and not t.HasField("result") for t in mine)
        statuses = [t.status for t in mine]
        assert statuses[0] == task_pb2.TASK_STATUS_QUEUED and statuses[-1] == task_pb2.TASK_STATUS_SUCCEEDED
        assert task_pb2.TASK_STATUS_RUNNING in statuses
        assert len({t.version for t in mine}) == len(mine), "each change once"
        for message in seen:
            assert message.ByteSize() <= events.MAX_ENTRY_BYTES

        # The raw entries in Redis: bounded, and not a byte of the payload or the result in them.
        needles = [marker.encode(), result_marker.encode()]
        owner_entries = await _owner_entries(redis, account.user_id)
        _check_small(owner_entries, needles)
        feed_entries = await _feed_entries(redis, account.user_id)
        assert len(feed_entries) >= len(mine)
        _check_small(feed_entries, needles)
    finally:
        watch.cancel()


async def test_a_long_error_is_cut_in_events_and_whole_in_get_task(
    user: tuple[AsyncClient, Account], redis: aioredis.Redis
) -> None:
    client, account = user
    message = "é" * 1500  # 3,000 bytes: the worker reports it whole (up to 2,000 characters)
    payload = {"message": message}
    (task,) = await client.submit("failing", kind="fail", workload=timedelta(0), payload=payload, max_attempts=1)
    (failed,) = await client.wait(task, timeout=60)
    assert failed.status is TaskStatus.FAILED and message in failed.error, "wait() returns the whole error"
    assert message in (await client.get(task.id)).error
    (last,) = [t for t in await _stored_tasks(redis, account.user_id) if t.status == task_pb2.TASK_STATUS_FAILED]
    assert last.summary
    assert len(last.error.encode()) <= ERROR_BYTES and last.error.endswith("…") and "éé" in last.error


async def test_a_snapshot_of_many_large_tasks_is_summaries(
    user: tuple[AsyncClient, Account], edge: grpc.aio.Channel
) -> None:
    client, account = user
    payload = {"fill": "s" * PAYLOAD_FILL_BYTES}
    replicas = 50
    submitted = []
    for _ in range(SNAPSHOT_TASKS // replicas):
        submitted += await client.submit("big", workload=timedelta(0), payload=payload, replicas=replicas)
    watch = Watch(edge, account)
    try:
        snapshot = (await watch.next(("snapshot",))).snapshot
    finally:
        watch.cancel()
    assert {t.id for t in snapshot.tasks} == {t.id for t in submitted}
    assert all(t.summary and not t.HasField("payload") for t in snapshot.tasks)
    assert snapshot.ByteSize() <= SNAPSHOT_TASKS * MAX_SUMMARY_BYTES + 64 * 1024


async def test_the_streams_stay_within_their_caps_in_bytes(stores: Stores) -> None:
    """The documented bounds hold in Valkey's own accounting: past both caps, with the widest tasks."""
    client = aioredis.Redis.from_url(stores.redis_url.rsplit("/", 1)[0] + "/9")
    owner = str(uuid.uuid4())
    change = events.TaskChange(owner, widest_task(), task_pb2.TASK_STATUS_RUNNING)
    try:
        await client.flushdb()
        for _ in range(0, events.FEED_MAXLEN + 2 * events.PUBLISH_CHUNK, events.PUBLISH_CHUNK):
            await events.publish_changes(client, [change] * events.PUBLISH_CHUNK)
        for key, cap in (
            (keys.owner_events_stream(owner), events.EVENTS_MAXLEN),
            (keys.EVENTS_FEED_STREAM, events.FEED_MAXLEN),
        ):
            length = await client.xlen(key)
            assert cap <= length <= cap + STREAM_NODE_ENTRIES, key
            used = await client.memory_usage(key, samples=0)
            assert used is not None and used <= (cap + STREAM_NODE_ENTRIES) * events.MAX_ENTRY_BYTES, (key, used)
    finally:
        await client.flushdb()
        await client.aclose()


async def _kind_served(client: AsyncClient) -> bool:
    return bulky_handler.KIND in await client.kinds()
