"""The dispatch library's read function (services/core/dispatch_functions.py) on a Valkey of its own, with our ACL
users: a worker's read is one FCALL that takes the streams in exactly the order of the lane-by-lane reads (priority
order, share lane before surplus lane, the aged turns, stopping at the count, the shards sharing a read); without
the library, or without FCALL in the worker's ACL, the worker reads lane by lane and says so once; once the library
is loaded, it calls the function again."""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from services.core import redis_acl
from services.core.config import RedisConfig
from services.core.dispatch import DispatchEntry, ensure_dispatch_groups, publish
from services.core.dispatch_functions import LIBRARY_CODE
from services.core.redis_client import create_redis
from services.stack.embedded import valkey_with_users
from services.stack.processes import ManagedProcess
from services.stack.redis_users import RedisLogin
from services.worker import consumer as consumer_module
from services.worker.consumer import AGING_EVERY_READS, DispatchConsumer
from tests.unit.dispatch_streams import KIND

SHARDS = 3


@dataclass
class Private:
    """A Valkey of this module's own (its functions are the server's, whatever the database): the operator's and
    the worker's logins."""

    admin: RedisLogin
    worker: RedisLogin
    process: ManagedProcess

    def url(self, login: RedisLogin, database: int) -> str:
        return login.url_with_password().rsplit("/", 1)[0] + f"/{database}"


@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Private]:
    folder: Path = tmp_path_factory.mktemp("valkey-functions")
    with valkey_with_users(folder) as (process, access):
        assert access.admin is not None
        yield Private(access.admin, access.worker, process)


@pytest.fixture
async def admin(private: Private) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(private.url(private.admin, 0))
    yield client
    await client.flushall()
    await client.aclose()


async def _stream_set(private: Private, database: int, made: list[DispatchEntry]) -> aioredis.Redis:
    """Publish `made` (as the services do) on a database, and return the worker user's client of it."""
    publisher = create_redis(RedisConfig(private.url(private.admin, database), dispatch_shards=SHARDS))
    try:
        await ensure_dispatch_groups(publisher, [KIND])
        await publish(publisher, made)
    finally:
        await publisher.aclose()
    return create_redis(RedisConfig(private.url(private.worker, database), dispatch_shards=SHARDS))


def _made(seed: int = 21) -> list[DispatchEntry]:
    """Every level in both lanes, of uneven sizes, some empty; published least urgent first. The ids (and so the
    shards they hash to) are the same at every run, so the reads' shapes are too."""
    ids = random.Random(seed)
    made = []
    for priority in (1, 2, 3, 4, 5):
        for surplus in (False, True):
            n = (priority * 3 + surplus * 5) % 7 * 4
            made += [
                DispatchEntry(
                    str(uuid.UUID(int=ids.getrandbits(128), version=4)),
                    str(uuid.UUID(int=ids.getrandbits(128), version=4)),
                    KIND,
                    priority=priority,
                    surplus=surplus,
                )
                for _ in range(n)
            ]
    return made


async def _calls(admin: aioredis.Redis, command: str) -> int:
    stats: dict[str, Any] = await admin.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_one_call_per_read_takes_the_entries_in_the_order_of_the_lane_by_lane_reads(
    private: Private, admin: aioredis.Redis
) -> None:
    await admin.function_load(LIBRARY_CODE, replace=True)
    made = _made()
    by_function = await _stream_set(private, 1, made)
    by_lanes = await _stream_set(private, 2, made)
    function_reader = DispatchConsumer(by_function, "w1", [KIND])
    lane_reader = DispatchConsumer(by_lanes, "w1", [KIND], read_function=False)
    try:
        # Counts that cross lanes and levels, over more reads than two rounds of turns (the surplus lanes' turn,
        # the aged levels'), until every entry is delivered.
        counts = [1, 2, 1, 3, 7, 1, 2, 1, 4, 2]
        orders: dict[str, list[list[tuple[str, int, bool, int]]]] = {"function": [], "lanes": []}
        fcalls_before = await _calls(admin, "fcall")
        reads = 0
        for read in range(200):
            count = counts[read % len(counts)]
            for name, reader in (("function", function_reader), ("lanes", lane_reader)):
                got = await reader.read(count, block_ms=1)  # the shards' shares may bring a few more
                orders[name].append([(d.entry.task_id, d.entry.priority, d.entry.surplus, d.entry.shard) for d in got])
            reads += 1
            if sum(map(len, orders["function"])) == len(made):
                break
        fcalls = await _calls(admin, "fcall") - fcalls_before
        assert orders["function"] == orders["lanes"]
        assert sorted(t for read in orders["function"] for t, *_ in read) == sorted(e.task_id for e in made)
        assert reads > 2 * AGING_EVERY_READS, "both kinds of turn came twice"
        assert fcalls == reads, "one round trip per read, the function's"
        levels_in_a_read = max(len({(p, s) for _, p, s, _ in read}) for read in orders["function"])
        assert levels_in_a_read >= 2, "a read went on to the next lane"
        assert {shard for read in orders["function"] for *_, shard in read} == set(range(SHARDS))
    finally:
        await by_function.aclose()
        await by_lanes.aclose()


def _strict(made: list[DispatchEntry]) -> list[tuple[int, bool]]:
    return sorted(((e.priority, e.surplus) for e in made), key=lambda lane: (-lane[0], lane[1]))


async def _drain(reader: DispatchConsumer, n: int) -> list[tuple[int, bool]]:
    """The first reads (before any turn), 2 entries each, until n are delivered."""
    order: list[tuple[int, bool]] = []
    while len(order) < n:
        got = await reader.read(2, block_ms=1)
        assert got, "entries left"
        order += [(d.entry.priority, d.entry.surplus) for d in got]
    return order


async def test_without_the_library_a_worker_reads_lane_by_lane_says_so_once_and_takes_it_up_once_loaded(
    private: Private, admin: aioredis.Redis, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger=consumer_module.__name__)
    await admin.function_flush()
    made = [e for e in _made() if e.priority in (5, 3, 1)][:6]
    client = await _stream_set(private, 3, made)
    reader = DispatchConsumer(client, "w1", [KIND])
    try:
        assert await _drain(reader, len(made)) == _strict(made)
        warned = [r for r in caplog.records if "not available" in r.getMessage()]
        assert len(warned) == 1, "said once, not at each read"
        # The operator loads the library: the next read past the retry time calls it.
        await admin.function_load(LIBRARY_CODE, replace=True)
        monkeypatch.setattr(consumer_module, "FUNCTION_RETRY_S", 0.0)
        more = _made(seed=22)[:4]
        publisher = create_redis(RedisConfig(private.url(private.admin, 3), dispatch_shards=SHARDS))
        try:
            await publish(publisher, more)
        finally:
            await publisher.aclose()
        fcalls = await _calls(admin, "fcall")
        assert sorted(await _drain(reader, len(more))) == sorted(_strict(more))
        assert await _calls(admin, "fcall") > fcalls
        assert len([r for r in caplog.records if "is available" in r.getMessage()]) == 1
    finally:
        await client.aclose()


async def test_a_worker_whose_user_may_not_call_functions_reads_lane_by_lane(
    private: Private, admin: aioredis.Redis
) -> None:
    """An upgrade whose operator loaded the library but not yet the new ACL file."""
    await admin.function_load(LIBRARY_CODE, replace=True)
    before = redis_acl.USERS[redis_acl.WORKER]
    old = replace(before, name="rtask-worker-old", commands=tuple(c for c in before.commands if c != "fcall"))
    password = uuid.uuid4().hex
    await admin.execute_command("ACL", "SETUSER", old.name, *old.rule(password).split()[2:])
    made = [e for e in _made() if e.priority in (4, 2)][:5]
    publisher = create_redis(RedisConfig(private.url(private.admin, 4), dispatch_shards=SHARDS))
    try:
        await ensure_dispatch_groups(publisher, [KIND])
        await publish(publisher, made)
    finally:
        await publisher.aclose()
    url = private.worker.url.rsplit("/", 1)[0].replace(before.name, old.name) + "/4"
    client = create_redis(RedisConfig(url, password=password, dispatch_shards=SHARDS))
    try:
        reader = DispatchConsumer(client, "w1", [KIND])
        assert await _drain(reader, len(made)) == _strict(made)
    finally:
        await client.aclose()
        await admin.execute_command("ACL", "DELUSER", old.name)
