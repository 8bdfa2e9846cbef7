"""The log store's bounds against the real Valkey (services.core.task_logs): per task, in total, in time, and
the numbering that makes every dropped line visible as a gap."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from services.core import keys, task_logs
from services.core.task_logs import LINE_OVERHEAD_BYTES, AttemptLines, TaskLogConfig
from tests.conftest import Stores

# A database of its own: these bounds are tiny, and the stack's logs live in database 0.
DATABASE = 5
NOW_MS = 1_800_000_000_000


@pytest.fixture
async def redis(stores: Stores) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(stores.redis_url.rsplit("/", 1)[0] + f"/{DATABASE}")
    await client.flushdb()
    try:
        yield client
    finally:
        await client.flushdb()
        await client.aclose()


def lines(texts: list[str], dropped_before: int = 0) -> list[tuple[int, int, int, str, str]]:
    return [(dropped_before if i == 0 else 0, NOW_MS, 2, "", text) for i, text in enumerate(texts)]


async def total_bytes(redis: aioredis.Redis) -> int:
    return int(await redis.get(keys.TASK_LOGS_BYTES) or 0)


async def test_per_task_bound_keeps_the_newest_lines_and_numbers_around_drops(redis: aioredis.Redis) -> None:
    config = TaskLogConfig(max_lines_per_task=20)
    task = str(uuid.uuid4())
    await task_logs.append(redis, [AttemptLines(task, 1, lines([f"a{i}" for i in range(15)]))], config, NOW_MS)
    # Five lines dropped by a rate bound before the next ones, three after them.
    batch = AttemptLines(task, 2, lines([f"b{i}" for i in range(15)], dropped_before=5), dropped_after=3)
    await task_logs.append(redis, [batch], config, NOW_MS)
    stored = await task_logs.read_after(redis, task, 0, 100)
    assert len(stored) == 20, "the oldest lines went first"
    assert [line.text for line in stored] == [f"a{i}" for i in range(10, 15)] + [f"b{i}" for i in range(15)]
    assert [line.sequence for line in stored] == list(range(11, 16)) + list(range(21, 36))
    assert stored[0].attempt == 1 and stored[-1].attempt == 2 and stored[-1].at.ToMilliseconds() == NOW_MS
    assert await task_logs.last_sequence(redis, task) == 38
    assert [line.text for line in await task_logs.read_after(redis, task, 33, 100)] == ["b13", "b14"]
    assert await total_bytes(redis) == sum(len(line.text) + LINE_OVERHEAD_BYTES for line in stored)


async def test_total_bound_deletes_least_recently_written_logs_first(redis: aioredis.Redis) -> None:
    line_bytes = 10 + LINE_OVERHEAD_BYTES
    config = TaskLogConfig(max_total_bytes=5 * 4 * line_bytes, max_tasks=4)
    tasks = [str(uuid.uuid4()) for _ in range(6)]
    for i, task in enumerate(tasks):
        await task_logs.append(redis, [AttemptLines(task, 1, lines(["x" * 10] * 4))], config, NOW_MS + i)
    kept = [task for task in tasks if await task_logs.read_after(redis, task, 0, 10)]
    assert kept == tasks[2:], "the two least recently written logs were deleted (max_tasks 4)"
    assert await redis.zcard(keys.TASK_LOGS_INDEX) == 4
    assert await total_bytes(redis) == 4 * 4 * line_bytes
    # Writing to the oldest makes it the newest: the next least recently written goes for the bytes bound.
    await task_logs.append(redis, [AttemptLines(tasks[2], 1, lines(["x" * 10] * 8))], config, NOW_MS + 10)
    kept = [task for task in tasks if await task_logs.read_after(redis, task, 0, 20)]
    assert kept == [tasks[2], *tasks[4:]] and await total_bytes(redis) <= config.max_total_bytes
    assert not await redis.exists(keys.task_log_meta(tasks[3])) and not await redis.xlen(keys.task_log_stream(tasks[3]))


async def test_logs_expire_after_the_retention_since_their_last_line(redis: aioredis.Redis) -> None:
    config = TaskLogConfig(retention_s=60)
    old, recent = str(uuid.uuid4()), str(uuid.uuid4())
    await task_logs.append(redis, [AttemptLines(old, 1, lines(["old"]))], config, NOW_MS)
    await task_logs.append(redis, [AttemptLines(recent, 1, lines(["recent"]))], config, NOW_MS + 30_000)
    counts = await task_logs.append(redis, [], config, NOW_MS + 61_000)  # the schedulers' periodic sweep
    assert counts.expired == 1
    assert await task_logs.read_after(redis, old, 0, 10) == [] and await task_logs.last_sequence(redis, old) == 0
    assert [line.text for line in await task_logs.read_after(redis, recent, 0, 10)] == ["recent"]
    assert await total_bytes(redis) == len("recent") + LINE_OVERHEAD_BYTES


def test_text_is_cut_to_4_kib_on_a_character_boundary() -> None:
    assert task_logs.cut_text("é" * 3000) == "é" * 2048
    assert len(task_logs.cut_text("a" * 5000).encode()) == 4096
    assert task_logs.cut_text("short") == "short"
