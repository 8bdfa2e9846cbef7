"""Redis accepts only our processes, each with only the rights it needs (services/core/redis_acl.py), on the
session's real Valkey and the full stack: no password, no entry; a worker consumes dispatch streams and
cannot forge events, commands, tasks or pool entries; the services cannot administer the server; every
process of the stack logs in as its role with a password no environment or log holds; and what reaches the
worker registry anyway is checked on read.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from resilienttask.v1 import scheduler_pb2, scheduler_pb2_grpc, task_pb2
from services.core import dispatch_functions, keys, redis_acl
from services.stack.redis_users import RedisLogin
from services.stack.stack import Stack
from tests.conftest import Stores
from tests.integration.accounts import signup
from tests.integration.tasks import UserTasks


def _client(login: RedisLogin | str) -> aioredis.Redis:
    return aioredis.Redis.from_url(login if isinstance(login, str) else login.url_with_password())


@pytest.fixture
async def admin(stores: Stores) -> AsyncIterator[aioredis.Redis]:
    client = _client(stores.redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def worker(stores: Stores) -> AsyncIterator[aioredis.Redis]:
    client = _client(stores.redis_access.worker)
    yield client
    await client.aclose()


@pytest.fixture
async def services(stores: Stores) -> AsyncIterator[aioredis.Redis]:
    client = _client(stores.redis_access.services)
    yield client
    await client.aclose()


def _port(stores: Stores) -> int:
    return int(stores.redis_access.services.url.rsplit(":", 1)[1].split("/")[0])


async def _refused(call: Callable[[], Awaitable[Any]]) -> str:
    """The refusal's message; fails the test when the call was allowed."""
    with pytest.raises(NoPermissionError) as refused:
        await call()
    return str(refused.value)


@pytest.mark.parametrize("protocol", [2, 3])
async def test_a_client_without_the_password_is_refused(stores: Stores, admin: aioredis.Redis, protocol: int) -> None:
    port = _port(stores)
    stream = keys.owner_events_stream(str(uuid.uuid4()))
    anonymous = aioredis.Redis(host="127.0.0.1", port=port, protocol=protocol)
    guessing = aioredis.Redis(
        host="127.0.0.1", port=port, username="rtask-services", password="not-the-password", protocol=protocol
    )
    as_default = aioredis.Redis(host="127.0.0.1", port=port, password="anything-at-all", protocol=protocol)
    try:
        for client in (anonymous, guessing, as_default):
            with pytest.raises(AuthenticationError):
                await client.xadd(stream, {"task": "forged"})
    finally:
        for client in (anonymous, guessing, as_default):
            await client.aclose()
    assert not await admin.exists(stream), "nothing was written"


async def test_the_worker_user_consumes_dispatch_streams_and_nothing_else(
    worker: aioredis.Redis, admin: aioredis.Redis
) -> None:
    stream = keys.dispatch_stream(f"acl-{uuid.uuid4().hex[:8]}")
    owner_stream = keys.owner_events_stream(str(uuid.uuid4()))
    try:
        # What a worker does (services/worker/consumer.py) is allowed.
        await worker.xgroup_create(stream, keys.DISPATCH_GROUP, id="0", mkstream=True)
        entry_id = await admin.xadd(stream, {keys.FIELD_TASK_ID: "t", keys.FIELD_DISPATCH_ID: "d"})
        reply = await worker.xreadgroup(keys.DISPATCH_GROUP, "w1", {stream: ">"}, count=10)
        assert reply[0][1][0][0] == entry_id
        await worker.xclaim(stream, keys.DISPATCH_GROUP, "w1", 0, [entry_id], justid=True)
        assert await worker.xpending_range(stream, keys.DISPATCH_GROUP, "-", "+", 10, consumername="w1")
        await worker.xautoclaim(stream, keys.DISPATCH_GROUP, "w2", 60_000)
        assert await worker.xack(stream, keys.DISPATCH_GROUP, entry_id) == 1
        assert await worker.xdel(stream, entry_id) == 1
        # Forging anything users or schedulers believe is refused.
        forged = {"task": "forged", "prev": "0", "deleted": "0", "after": "0-0"}
        assert "xadd" in await _refused(lambda: worker.xadd(owner_stream, forged))
        assert "xadd" in await _refused(lambda: worker.xadd(keys.EVENTS_FEED_STREAM, forged))
        assert "xadd" in await _refused(lambda: worker.xadd(stream, {keys.FIELD_TASK_ID: "t"}))
        assert "publish" in await _refused(lambda: worker.publish(keys.COMMAND_CHANNEL, "{}"))
        assert "publish" in await _refused(lambda: worker.publish(keys.WORKERS_EVENTS_CHANNEL, "w"))
        assert "hset" in await _refused(lambda: worker.hset(keys.WORKERS_HASH, "w", "{}"))
        assert "hdel" in await _refused(lambda: worker.hdel(keys.WORKERS_HASH, "w"))
        assert "eval" in await _refused(lambda: worker.eval("return 1", 0))
        # Nor can it read other users' events, or the registry.
        assert "xrange" in await _refused(lambda: worker.xrange(keys.EVENTS_FEED_STREAM, count=1))
        await _refused(lambda: worker.xreadgroup(keys.DISPATCH_GROUP, "w1", {keys.EVENTS_FEED_STREAM: ">"}))
        assert "hgetall" in await _refused(lambda: worker.hgetall(keys.WORKERS_HASH))
        assert "xgroup|destroy" in await _refused(lambda: worker.xgroup_destroy(stream, keys.DISPATCH_GROUP))
        assert "flushall" in await _refused(lambda: worker.flushall())
    finally:
        await admin.delete(stream)
    assert not await admin.exists(owner_stream)


async def test_the_worker_user_runs_the_dispatch_function_on_dispatch_streams_only(
    worker: aioredis.Redis, admin: aioredis.Redis
) -> None:
    """FCALL runs only what the operator loaded, and the commands inside are checked against the caller's ACL: the
    worker's read function cannot reach a key outside the dispatch streams, even one with a consumer group."""
    stream = keys.dispatch_stream(f"acl-{uuid.uuid4().hex[:8]}")
    elsewhere = f"{keys.PREFIX}:acl-probe:{uuid.uuid4().hex[:8]}"

    def read(*streams: str) -> Awaitable[Any]:
        args = [keys.DISPATCH_GROUP, "w1", 10, 1, len(streams)]
        return worker.fcall(dispatch_functions.READ_FUNCTION, len(streams), *streams, *args)

    try:
        for key in (stream, elsewhere):
            await admin.xgroup_create(key, keys.DISPATCH_GROUP, id="0", mkstream=True)
            await admin.xadd(key, {keys.FIELD_TASK_ID: "t", keys.FIELD_DISPATCH_ID: "d"})
        (name, entries), *_ = await read(stream)
        assert name.decode() == stream and len(entries) == 1
        await _refused(lambda: read(elsewhere))
        with pytest.raises(ResponseError, match="lane size"):  # a lane of no stream would never end
            await worker.fcall(dispatch_functions.READ_FUNCTION, 1, stream, keys.DISPATCH_GROUP, "w1", 10, 1, 0)
        await _refused(lambda: read(keys.EVENTS_FEED_STREAM))
        assert (await admin.xpending(elsewhere, keys.DISPATCH_GROUP))["pending"] == 0, "nothing read"
        # It may run the library, not change it, nor run Lua of its own.
        code = dispatch_functions.LIBRARY_CODE
        assert "function|load" in await _refused(lambda: worker.function_load(code, replace=True))
        assert "function|delete" in await _refused(lambda: worker.function_delete(dispatch_functions.LIBRARY))
        assert "function|flush" in await _refused(lambda: worker.function_flush())
        assert "eval" in await _refused(lambda: worker.eval("return 1", 0))
    finally:
        await admin.delete(stream, elsewhere)


async def test_the_worker_user_cannot_listen_to_the_command_channel(stores: Stores) -> None:
    client = _client(stores.redis_access.worker)
    pubsub = client.pubsub()
    try:
        with pytest.raises(NoPermissionError):
            await pubsub.subscribe(keys.COMMAND_CHANNEL)
            await pubsub.get_message(timeout=5)
    finally:
        await pubsub.aclose()
        await client.aclose()


async def test_the_services_user_keeps_to_our_keys_and_cannot_administer_the_server(
    services: aioredis.Redis, admin: aioredis.Redis
) -> None:
    outside = f"not-ours-{uuid.uuid4().hex[:8]}"
    script = "return redis.call('XADD', KEYS[1], '*', 'a', '1')"
    assert "key" in (await _refused(lambda: services.eval(script, 1, outside))).lower()
    assert "key" in (await _refused(lambda: services.hset(outside, "a", "1"))).lower()
    for refused in (
        lambda: services.flushall(),
        lambda: services.flushdb(),
        lambda: services.config_set("maxmemory", "0"),
        lambda: services.acl_setuser("intruder", enabled=True, nopass=True),
        lambda: services.keys("*"),
        lambda: services.delete(keys.WORKERS_HASH),
        lambda: services.shutdown(),
    ):
        await _refused(refused)
    assert not await admin.exists(outside)
    assert await admin.acl_getuser("intruder") is None


async def test_every_process_of_the_stack_logs_in_as_its_role_and_no_password_is_in_sight(
    stack: Stack, stores: Stores, admin: aioredis.Redis
) -> None:
    access = stores.redis_access
    passwords = {
        login.password_file.read_text().strip()
        for login in (access.services, access.worker, access.admin)
        if login is not None and login.password_file is not None
    }
    assert len(passwords) == 3
    for name in [*stack.names("gateway"), *stack.names("scheduler"), *stack.names("worker")]:
        env = stack.processes[name].env
        login = access.worker if name.startswith("worker-") else access.services
        assert env["REDIS_URL"] == login.url, name
        assert env["RTASK_REDIS_PASSWORD_FILE"] == str(login.password_file), name
        assert not any(password in value for value in env.values() for password in passwords), name
    users = {client["user"] for client in await admin.client_list()}
    assert {redis_acl.USERS[redis_acl.SERVICES].name, redis_acl.USERS[redis_acl.WORKER].name} <= users
    assert "default" not in users
    for log in stack.log_dir.glob("*.log"):
        text = log.read_text(errors="replace")
        assert not any(password in text for password in passwords), log.name


def _forged_entries(now: float) -> dict[str, bytes]:
    """Registry entries no scheduler writes: each broke SubmitTask, ListKinds or ListWorkers with INTERNAL."""

    def entry(worker_id: str, **changes: Any) -> bytes:
        value = {"id": worker_id, "slots": 4, "busy": 0, "kinds": ["sleep"], "started_at": now, "last_heartbeat": now}
        value.update(changes)
        return json.dumps(value).encode()

    tag = uuid.uuid4().hex[:6]
    return {
        f"forged-{tag}-json": b"{not json",
        f"forged-{tag}-utf8": b"\xff\xfe\x00",
        f"forged-{tag}-list": b"[1, 2, 3]",
        f"forged-{tag}-slots-text": entry(f"forged-{tag}-slots-text", slots="ten"),
        f"forged-{tag}-slots-huge": entry(f"forged-{tag}-slots-huge", slots=10**40),
        f"forged-{tag}-kinds-text": entry(f"forged-{tag}-kinds-text", kinds="abc"),
        f"forged-{tag}-kinds-many": entry(f"forged-{tag}-kinds-many", kinds=[f"k{i}" for i in range(20_000)]),
        f"forged-{tag}-nan": entry(f"forged-{tag}-nan", last_heartbeat=float("nan")),
        f"forged-{tag}-far-future": entry(f"forged-{tag}-far-future", last_heartbeat=1e300),
        f"forged-{tag}-missing": json.dumps({"id": f"forged-{tag}-missing"}).encode(),
        f"forged-{tag}-other-id": entry("worker-1"),
    }


async def test_malformed_registry_entries_are_skipped_and_the_pool_still_answers(
    stack: Stack, edge: grpc.aio.Channel, admin: aioredis.Redis
) -> None:
    forged = _forged_entries(time.time())
    await admin.hset(keys.WORKERS_HASH, mapping=forged)  # type: ignore[arg-type]
    try:
        user = UserTasks(edge, await signup(edge, "registry"))
        stub = scheduler_pb2_grpc.SchedulerServiceStub(edge)
        md = user.account.metadata
        listed = await stub.ListWorkers(scheduler_pb2.ListWorkersRequest(), metadata=md)
        ids = {w.id for w in listed.workers}
        assert ids and not ids & set(forged), "the live workers are listed, no forged entry"
        kinds = await stub.ListKinds(scheduler_pb2.ListKindsRequest(), metadata=md)
        assert "k1" not in kinds.kinds and "a" not in kinds.kinds
        # A kind no cache holds makes the gateway read the pool again: refused for what it is, not INTERNAL.
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await user.submit(kind=f"unknown-{uuid.uuid4().hex[:6]}")
        assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        (task,) = await user.submit(workload_s=0.05)
        done = await user.wait_for(task.id)
        assert done.status == task_pb2.TASK_STATUS_SUCCEEDED
    finally:
        await admin.hdel(keys.WORKERS_HASH, *forged)
