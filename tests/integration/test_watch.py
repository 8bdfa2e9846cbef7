"""WatchTasks through Envoy on the full stack: snapshot, live events, resume (also on the other gateway after
the serving one is killed), re-snapshot after trimming, isolation between users, pool updates, many watchers.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc
import pytest
import redis.asyncio as aioredis

from resilienttask.v1 import scheduler_pb2, scheduler_pb2_grpc, task_pb2
from services.core import worker_registry
from services.core.redis_client import key_layout
from services.core.task_model import TERMINAL
from services.gateway.watch import tokens
from services.stack.stack import Stack
from tests.conftest import Stores, admin_redis
from tests.integration.accounts import Account, signup
from tests.integration.tasks import UserTasks
from tests.integration.watching import Message, Watch, has_version, key, restart_gateway

S = task_pb2
T = TypeVar("T")
# Calls a test makes while a gateway dies: each is tried this many times on UNAVAILABLE.
KILL_WINDOW_ATTEMPTS = 5


@pytest.fixture
async def redis(stores: Stores) -> AsyncIterator[aioredis.Redis]:
    client = admin_redis(stores)
    yield client
    await client.aclose()


@pytest.fixture
async def account(edge: grpc.aio.Channel) -> Account:
    return await signup(edge, "watch")


@pytest.fixture
def user(edge: grpc.aio.Channel, account: Account) -> UserTasks:
    return UserTasks(edge, account)


async def _retrying(call: Callable[[], Awaitable[T]]) -> T:
    """An idempotent call, repeated on UNAVAILABLE as a real client does: while a gateway is being killed,
    Envoy's own retries keep most calls alive, not every one (see NOTES-edge)."""
    for attempt in range(1, KILL_WINDOW_ATTEMPTS + 1):
        try:
            return await call()
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == KILL_WINDOW_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


async def _submit(user: UserTasks, replicas: int = 1) -> list[S.Task]:
    request_id = str(uuid.uuid4())
    return await _retrying(lambda: user.submit(workload_s=60, replicas=replicas, request_id=request_id))


async def _settle(user: UserTasks, tasks: list[S.Task]) -> dict[str, int]:
    """Cancel the tasks, wait until each is terminal, and return the final version of each."""
    for batch_id in {t.batch_id for t in tasks}:
        await _retrying(lambda batch_id=batch_id: user.cancel_batch(batch_id))
    done = await asyncio.gather(*(_retrying(lambda t=t: user.wait_for(t.id)) for t in tasks))
    return {t.id: t.version for t in done}


def _saw_all(final: dict[str, int]):  # type: ignore[no-untyped-def]
    return lambda events: all(has_version(task_id, version)(events) for task_id, version in final.items())


async def test_snapshot_then_the_whole_life_of_a_task_in_order(edge: grpc.aio.Channel, user: UserTasks) -> None:
    watch = Watch(edge, user.account)
    try:
        first = await watch.next()
        assert first.WhichOneof("kind") == "snapshot"
        assert list(first.snapshot.tasks) == [] and first.snapshot.stats == S.TaskStats()
        assert first.snapshot.workers, "the stack's workers are part of the snapshot"

        (task,) = await user.submit(workload_s=1.0)
        events = await watch.events_until(lambda ev: bool(ev) and ev[-1].event.task.status in TERMINAL)
    finally:
        watch.cancel()

    assert {e.event.task.id for e in events} == {task.id}
    versions = [e.event.task.version for e in events]
    assert len(set(versions)) == len(versions), f"each change once: {versions}"
    assert [e.event.task.status for e in events if e.event.task.version == 1] == [S.TASK_STATUS_QUEUED]
    # What a client keeps: updates newer than what it holds. (SubmitTask emits QUEUED after dispatching,
    # so a fast worker's RUNNING can precede it in the history; the client then drops the stale QUEUED.)
    kept, newest = [], 0
    for event in events:
        if event.event.task.version > newest:
            kept.append(event)
            newest = event.event.task.version
    statuses = [e.event.task.status for e in kept]
    assert statuses[-1] == S.TASK_STATUS_SUCCEEDED, statuses
    running = [e.event.task for e in kept if e.event.task.status == S.TASK_STATUS_RUNNING]
    assert running, statuses
    assert any(0 < t.progress < 1 for t in running), [t.progress for t in running]
    phases = {S.TASK_STATUS_QUEUED: 0, S.TASK_STATUS_RUNNING: 1, S.TASK_STATUS_SUCCEEDED: 2}
    assert [phases[s] for s in statuses] == sorted(phases[s] for s in statuses), statuses
    # Counts are read when the gateway routes an event, so only the last one is sure to be quiescent.
    assert events[-1].event.stats == S.TaskStats(succeeded=1)
    assert len({e.resume_token for e in events}) == len(events)


async def test_reconnecting_with_the_last_token_replays_exactly_the_missed_events(
    edge: grpc.aio.Channel, user: UserTasks
) -> None:
    reference = Watch(edge, user.account)
    first = Watch(edge, user.account)
    try:
        await reference.next()
        await first.next()
        batch1 = await user.submit(workload_s=60, replicas=3)
        seen = await first.events_until(lambda ev: len(ev) >= 3)
        token = first.token
        first.cancel()

        batch2 = await user.submit(workload_s=60, replicas=3)
        final = await _settle(user, batch1 + batch2)
        everything = await reference.events_until(_saw_all(final))

        resumed = Watch(edge, user.account, token)
        try:
            missed = await resumed.events_until(lambda ev: bool(ev) and ev[-1].resume_token == reference.token)
        finally:
            resumed.cancel()
    finally:
        reference.cancel()
        first.cancel()

    assert resumed.received[0].WhichOneof("kind") == "event", "a resume replays; it does not re-snapshot"
    combined = [key(e) for e in seen + missed]
    assert combined == [key(e) for e in everything]
    assert len(set(combined)) == len(combined), "no event twice"
    assert missed, "events happened while disconnected"


async def _history_after(redis: aioredis.Redis, owner_id: str, token: str) -> list[str]:
    """Resume tokens of the owner's history entries after the position a token names."""
    entries = await redis.xrange(key_layout(redis).owner_events_stream(owner_id), f"({tokens.decode(token)}", "+")
    return [tokens.encode(entry_id.decode()) for entry_id, _ in entries]


async def _serving_gateway(stack: Stack, watch: Watch, user: UserTasks) -> str:
    """Kill gateways one at a time until the watch breaks; the others are restarted. Returns the killed one."""
    for name in stack.names("gateway"):
        stack.processes[name].kill()
        serving = False
        try:
            (probe,) = await _submit(user)
            try:
                await watch.events_until(has_version(probe.id, 1))
            except grpc.aio.AioRpcError:
                serving = True
            await _settle(user, [probe])
        finally:
            if not serving:  # also when a call failed: the next test must find every gateway up
                await restart_gateway(stack, name)
        if serving:
            return name
    raise AssertionError("no gateway was serving the watch")


async def test_resume_on_the_other_gateway_after_the_serving_one_is_killed(
    edge: grpc.aio.Channel, stack: Stack, user: UserTasks, redis: aioredis.Redis
) -> None:
    watch = Watch(edge, user.account)
    killed: str | None = None
    try:
        await watch.next()
        (task,) = await user.submit(workload_s=60)
        await watch.events_until(has_version(task.id, 1))
        await _settle(user, [task])
        killed = await _serving_gateway(stack, watch, user)
        token = watch.token

        # While disconnected: changes the client must get on reconnecting.
        later = await _submit(user, replicas=2)
        await _settle(user, later)
        expected = await _history_after(redis, user.account.user_id, token)
        assert expected, "changes happened after the last message the client saw"

        resumed = Watch(edge, user.account, token)  # Envoy routes it to the surviving gateway
        try:
            await resumed.events_until(lambda ev: bool(ev) and ev[-1].resume_token == expected[-1])
        finally:
            resumed.cancel()
        assert [m.resume_token for m in resumed.received if m.WhichOneof("kind") == "event"] == expected
    finally:
        watch.cancel()
        if killed is not None:
            await restart_gateway(stack, killed)


async def test_trimmed_history_gets_a_fresh_snapshot(
    edge: grpc.aio.Channel, user: UserTasks, redis: aioredis.Redis
) -> None:
    watch = Watch(edge, user.account)
    try:
        await watch.next()
        first = await user.submit(workload_s=60, replicas=2)
        await watch.events_until(lambda ev: len(ev) >= 2)
        token = watch.token
    finally:
        watch.cancel()
    later = await user.submit(workload_s=60, replicas=3)
    final = await _settle(user, first + later)
    await redis.xtrim(key_layout(redis).owner_events_stream(user.account.user_id), maxlen=1, approximate=False)

    resumed = Watch(edge, user.account, token)
    try:
        snapshot = await resumed.next()
        assert snapshot.WhichOneof("kind") == "snapshot", "the missed events are gone: start over"
        assert {t.id: t.version for t in snapshot.snapshot.tasks} == final
        stats = await user.stub.GetStats(scheduler_pb2.GetStatsRequest(), metadata=user.account.metadata)
        assert snapshot.snapshot.stats == stats.stats
        # And the stream goes on live from there.
        (extra,) = await user.submit(workload_s=60)
        await resumed.events_until(has_version(extra.id, 1))
        await _settle(user, [extra])
    finally:
        resumed.cancel()


async def test_watchers_see_only_their_own_tasks(edge: grpc.aio.Channel) -> None:
    alice, bob = UserTasks(edge, await signup(edge, "alice")), UserTasks(edge, await signup(edge, "bob"))
    alice_watch, bob_watch = Watch(edge, alice.account), Watch(edge, bob.account)
    try:
        await alice_watch.next()
        await bob_watch.next()
        bobs = await bob.submit(workload_s=60, replicas=3)
        bob_final = await _settle(bob, bobs)
        (marker,) = await alice.submit(workload_s=60)
        alice_final = await _settle(alice, [marker])

        alice_events = await alice_watch.events_until(_saw_all(alice_final))
        bob_events = await bob_watch.events_until(_saw_all(bob_final))
        assert {e.event.task.id for e in alice_events} == {marker.id}
        assert {e.event.task.id for e in bob_events} == set(bob_final)

        # A fresh snapshot holds the caller's tasks and counts only, and the pool without anyone's tasks.
        again = Watch(edge, alice.account)
        try:
            snapshot = (await again.next()).snapshot
        finally:
            again.cancel()
        assert [t.id for t in snapshot.tasks] == [marker.id]
        assert snapshot.stats == S.TaskStats(cancelled=1)
        raw = snapshot.SerializeToString()
        assert not any(task_id.encode() in raw for task_id in bob_final)

        # Someone else's token names nothing in bob's history: bob gets his own snapshot, never alice's events.
        borrowed = Watch(edge, bob.account, alice_watch.token)
        try:
            first = await borrowed.next()
        finally:
            borrowed.cancel()
        assert first.WhichOneof("kind") == "snapshot"
        assert {t.id for t in first.snapshot.tasks} == set(bob_final)
    finally:
        alice_watch.cancel()
        bob_watch.cancel()


async def test_pool_changes_reach_watchers(edge: grpc.aio.Channel, account: Account, redis: aioredis.Redis) -> None:
    watch = Watch(edge, account)
    probe = worker_registry.WorkerInfo(id=f"probe-{uuid.uuid4().hex[:8]}", slots=4, kinds=["sleep"])

    async def pool_until(predicate) -> Message:  # type: ignore[no-untyped-def]
        while True:
            message = await watch.next(("workers",))
            if predicate({w.id: w for w in message.workers.workers}):
                return message

    try:
        await watch.next()
        await worker_registry.upsert(redis, probe, announce=True)
        await pool_until(lambda pool: probe.id in pool and pool[probe.id].busy == 0)
        probe.busy = 3
        await worker_registry.upsert(redis, probe, announce=True)
        await pool_until(lambda pool: probe.id in pool and pool[probe.id].busy == 3)
        listed = await scheduler_pb2_grpc.SchedulerServiceStub(edge).ListWorkers(
            scheduler_pb2.ListWorkersRequest(), metadata=account.metadata
        )
        assert {w.id: w.busy for w in listed.workers}[probe.id] == 3
        await worker_registry.remove(redis, probe.id)
        await pool_until(lambda pool: probe.id not in pool)
    finally:
        watch.cancel()
        await worker_registry.remove(redis, probe.id)


async def test_five_hundred_watchers_all_receive_an_event(stack: Stack, user: UserTasks) -> None:
    channels = [grpc.aio.insecure_channel(stack.edge_address) for _ in range(5)]
    watches = [Watch(channel, user.account) for channel in channels for _ in range(100)]
    try:
        snapshots = await asyncio.gather(*(w.next() for w in watches))
        assert {s.WhichOneof("kind") for s in snapshots} == {"snapshot"}
        (task,) = await user.submit(workload_s=60)
        received = await asyncio.gather(*(w.events_until(has_version(task.id, 1)) for w in watches))
        assert len(received) == 500
        assert all(events[-1].event.task.status == S.TASK_STATUS_QUEUED for events in received)
        await _settle(user, [task])
    finally:
        for watch in watches:
            watch.cancel()
        for channel in channels:
            await channel.close()


@pytest.mark.parametrize(
    "token",
    [
        "not a token!",
        tokens.encode("1-1").replace("djE", "djI"),  # another version prefix
        "djE6YWJj",  # "v1:abc"
        "A" * 500,
    ],
)
async def test_malformed_resume_tokens_are_refused(edge: grpc.aio.Channel, account: Account, token: str) -> None:
    watch = Watch(edge, account, token)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await watch.next()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "resume_token" in (caught.value.details() or "")


async def test_watching_needs_a_token(edge: grpc.aio.Channel) -> None:
    call = scheduler_pb2_grpc.SchedulerServiceStub(edge).WatchTasks(scheduler_pb2.WatchTasksRequest())
    with pytest.raises(grpc.aio.AioRpcError) as caught, contextlib.suppress(StopAsyncIteration):
        await call.read()
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
