"""WatchTasks on one in-process gateway with small settings, to observe what Envoy hides: heartbeats, the
release of a cancelled call, a slow watcher's overflow, and the event format in Redis.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import grpc
import pytest
import redis.asyncio as aioredis

from resilienttask.v1 import task_pb2
from services.core import keys
from services.core.config import AuthConfig, DatabaseConfig, RedisConfig, ServerConfig
from services.core.events import ORIGIN, TaskChange, publish_changes
from services.gateway.app import GatewayConfig, create_gateway
from services.gateway.watch import history, tokens
from services.gateway.watch.config import WatchConfig
from services.gateway.watch.hub import Hub
from tests.conftest import TEST_BCRYPT_COST, Stores
from tests.helpers import eventually
from tests.integration.accounts import Account, signup
from tests.integration.watching import Watch

QUEUE_LIMIT = 5


@dataclass
class InProcess:
    channel: grpc.aio.Channel
    hub: Hub


async def _database_accepts_connections(url: str) -> bool:
    try:
        connection = await asyncpg.connect(url)
    except (asyncpg.CannotConnectNowError, OSError):
        return False
    await connection.close()
    return True


@pytest.fixture
async def gateway(stores: Stores) -> AsyncIterator[InProcess]:
    # The stores fixture waits for the port; PostgreSQL may still be starting up behind it.
    await eventually(lambda: _database_accepts_connections(stores.database_url), timeout_s=60)
    config = GatewayConfig(
        server=ServerConfig(),
        database=DatabaseConfig(stores.database_url),
        redis=RedisConfig(stores.redis_url),
        auth=AuthConfig(jwt_secret=secrets.token_bytes(32), bcrypt_cost=TEST_BCRYPT_COST),
        watch=WatchConfig(heartbeat_ms=200, queue_limit=QUEUE_LIMIT),
    )
    built = await create_gateway(config)
    await built.service.start(config.server)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{built.service.port}") as channel:
            yield InProcess(channel, built.watch_hub)
    finally:
        await built.service.stop(0)


@pytest.fixture
async def account(gateway: InProcess) -> Account:
    return await signup(gateway.channel, "inproc")


async def test_an_idle_stream_gets_heartbeats_carrying_its_position(gateway: InProcess, account: Account) -> None:
    watch = Watch(gateway.channel, account)
    try:
        snapshot = await watch.next()
        heartbeat = await watch.next(("heartbeat",))
        assert heartbeat.resume_token == snapshot.resume_token
    finally:
        watch.cancel()


async def test_a_cancelled_call_releases_its_subscriber_at_once(gateway: InProcess, account: Account) -> None:
    watches = [Watch(gateway.channel, account) for _ in range(3)]
    for watch in watches:
        await watch.next()
    assert gateway.hub.subscriber_count == 3
    watches[0].cancel()

    async def count_is(n: int) -> bool:
        return gateway.hub.subscriber_count == n

    await eventually(lambda: count_is(2), message="one subscriber released")
    for watch in watches[1:]:
        watch.cancel()
    await eventually(lambda: count_is(0), message="every subscriber released")


async def test_a_watcher_that_falls_behind_gets_a_fresh_snapshot(
    gateway: InProcess, account: Account, redis: aioredis.Redis
) -> None:
    watch = Watch(gateway.channel, account)
    try:
        await watch.next()
        # One publication is one atomic append (no worker in between): the reader offers all of it before
        # the call can send any, and the queue overflows.
        burst = [_change(account.user_id, task_pb2.TASK_STATUS_QUEUED, 0) for _ in range(4 * QUEUE_LIMIT)]
        await publish_changes(redis, burst)
        following = await watch.next()
        assert following.WhichOneof("kind") == "snapshot", "none of the burst was sent: a fresh start instead"
        burst_end = await history.last_position(redis, account.user_id)
        assert burst_end != ORIGIN and following.resume_token == tokens.encode(burst_end), "it starts after the burst"
        assert gateway.hub.subscriber_count == 1
    finally:
        watch.cancel()


async def test_a_malformed_feed_entry_does_not_stop_delivery(
    gateway: InProcess, account: Account, redis: aioredis.Redis
) -> None:
    watch = Watch(gateway.channel, account)
    bad: bytes | None = None
    try:
        await watch.next()
        bad = await redis.xadd(keys.EVENTS_FEED_STREAM, {"owner": account.user_id, "seq": "not a number"})
        await _next_event_is_a_fresh_change(watch, redis, account.user_id)
    finally:
        watch.cancel()
        if bad is not None:
            await redis.xdel(keys.EVENTS_FEED_STREAM, bad)


async def test_the_feed_is_read_only_while_someone_watches_and_nothing_is_missed(
    gateway: InProcess, account: Account, redis: aioredis.Redis
) -> None:
    async def reading(expected: bool) -> bool:
        return gateway.hub.reading_feed == expected

    await eventually(lambda: reading(False), message="no watcher: the feed is not read")
    # Changes while nobody watches (and after a watcher left) reach a later watcher from its history.
    before = _change(account.user_id, task_pb2.TASK_STATUS_QUEUED, 0)
    await publish_changes(redis, [before])
    first = Watch(gateway.channel, account)
    await first.next()
    assert gateway.hub.reading_feed
    first.cancel()
    await eventually(lambda: reading(False), message="the last watcher left: the reader stops")
    while_away = _change(account.user_id, task_pb2.TASK_STATUS_QUEUED, 0)
    await publish_changes(redis, [while_away])
    watch = Watch(gateway.channel, account, resume_token=first.token)
    try:
        missed = await watch.next()
        assert missed.WhichOneof("kind") == "event" and missed.event.task.id == while_away.task.id
        await _next_event_is_a_fresh_change(watch, redis, account.user_id)
    finally:
        watch.cancel()


async def _next_event_is_a_fresh_change(watch: Watch, redis: aioredis.Redis, owner_id: str) -> None:
    """Publish a change for the owner: the watch's next message is that event."""
    change = _change(owner_id, task_pb2.TASK_STATUS_QUEUED, 0)
    await publish_changes(redis, [change])
    following = await watch.next()
    assert following.WhichOneof("kind") == "event" and following.event.task.id == change.task.id


async def test_each_event_is_encoded_once_however_many_watch_it(
    gateway: InProcess, account: Account, redis: aioredis.Redis
) -> None:
    watches = [Watch(gateway.channel, account, accept_batches=i % 2 == 0) for i in range(20)]
    try:
        for watch in watches:
            await watch.next()
        encoded = gateway.hub.events_encoded
        change = _change(account.user_id, task_pb2.TASK_STATUS_QUEUED, 0)
        await publish_changes(redis, [change])
        for watch in watches:
            message = await watch.next()
            assert message.WhichOneof("kind") == "event" and message.event.task.id == change.task.id
            assert message.event.resume_token == message.resume_token
        assert gateway.hub.events_encoded == encoded + 1, "one encoding for all 20 watchers"
    finally:
        for watch in watches:
            watch.cancel()


async def test_a_burst_is_one_message_to_a_client_that_takes_batches_and_resumes_from_any_of_its_events(
    gateway: InProcess, account: Account, redis: aioredis.Redis
) -> None:
    batching = Watch(gateway.channel, account, accept_batches=True)
    single = Watch(gateway.channel, account)
    try:
        await batching.next()
        await single.next()
        # One publication is one atomic append: the reader offers all of it before either call sends any.
        burst = [_change(account.user_id, task_pb2.TASK_STATUS_QUEUED, 0) for _ in range(QUEUE_LIMIT - 1)]
        await publish_changes(redis, burst)
        ids = [c.task.id for c in burst]

        message = await batching.next()
        assert message.WhichOneof("kind") == "events"
        events = list(message.events.events)
        assert [e.task.id for e in events] == ids
        assert message.resume_token == events[-1].resume_token
        assert len({e.resume_token for e in events}) == len(events), "each event names its own position"
        alone = [await single.next() for _ in burst]
        assert [m.event.task.id for m in alone] == ids, "an older client gets one event per message"
        assert [m.resume_token for m in alone] == [e.resume_token for e in events], "the same positions"

        # A client that stopped after the second event of the batch resumes with exactly the rest.
        resumed = Watch(gateway.channel, account, events[1].resume_token, accept_batches=True)
        try:
            rest = await resumed.next()
            assert rest.WhichOneof("kind") == "events"
            assert [e.task.id for e in rest.events.events] == ids[2:]
            await _next_event_is_a_fresh_change(resumed, redis, account.user_id)
        finally:
            resumed.cancel()
    finally:
        batching.cancel()
        single.cancel()


def _change(owner_id: str, status: int, previous: int, deleted: bool = False) -> TaskChange:
    return TaskChange(owner_id, task_pb2.Task(id=str(uuid.uuid4()), status=status), previous, deleted)


async def test_each_event_names_the_one_before_it(redis: aioredis.Redis) -> None:
    owner = str(uuid.uuid4())
    assert await history.last_position(redis, owner) == ORIGIN
    assert await history.read_after(redis, owner, ORIGIN, 10) == []
    feed_before = await redis.xrevrange(keys.EVENTS_FEED_STREAM, "+", "-", count=1)

    changes = [_change(owner, task_pb2.TASK_STATUS_QUEUED, 0) for _ in range(3)]
    await publish_changes(redis, changes)
    await publish_changes(redis, [_change(owner, task_pb2.TASK_STATUS_CANCELLED, 0, deleted=True)])

    events = await history.read_after(redis, owner, ORIGIN, 10)
    assert events is not None and len(events) == 4
    assert [e.after for e in events] == [ORIGIN, *(e.entry_id for e in events[:-1])]
    assert [e.change.task.id for e in events[:3]] == [c.task.id for c in changes]
    assert events[3].change.deleted and not events[0].change.deleted
    assert await history.last_position(redis, owner) == events[-1].entry_id
    assert await history.read_after(redis, owner, events[-1].entry_id, 10) == []
    assert [e.entry_id for e in await history.read_after(redis, owner, events[1].entry_id, 10) or []] == [
        e.entry_id for e in events[2:]
    ]

    start = feed_before[0][0].decode() if feed_before else ORIGIN
    everything = await redis.xrange(keys.EVENTS_FEED_STREAM, f"({start}", "+")
    feed = [f for _, f in everything if f[b"owner"] == owner.encode()]
    assert [f[b"id"].decode() for f in feed] == [e.entry_id for e in events]
    seqs = [int(f[b"seq"]) for _, f in everything]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "the feed's sequence has no holes"

    # A position that is not in this history, and a trimmed one, both say: start over.
    assert await history.read_after(redis, owner, "99999999999999-0", 10) is None
    await redis.xtrim(keys.owner_events_stream(owner), maxlen=1, approximate=False)
    assert await history.read_after(redis, owner, events[1].entry_id, 10) is None
    assert await history.read_after(redis, owner, events[2].entry_id, 10) is not None
    await redis.delete(keys.owner_events_stream(owner))
