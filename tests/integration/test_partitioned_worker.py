"""A worker whose network path stalls (open connections that stop carrying bytes, nothing closed) must
neither run a task while another worker runs it, nor take entries it cannot start; and a start whose answer it
lost must be resumed, not handed to another worker as a new attempt.

Two real workers run in this process against a private scheduler and the session's Valkey; worker A
reaches both through loopback proxies the test stalls, worker B directly. The task body records its
own run interval (tests/integration/interval_handler.py), so an overlap would be seen, not inferred.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import pytest
import redis.asyncio as aioredis

from services.core import keys
from services.core.config import RedisConfig
from services.core.dispatch import ensure_dispatch_groups
from services.core.redis_client import create_redis
from services.core.task_model import CANCELLED, CANCELLING, QUEUED, RUNNING, SUCCEEDED
from services.core.transitions import user as transitions
from services.worker.config import WorkerConfig
from services.worker.worker import Worker
from tests.helpers import eventually
from tests.integration import interval_handler, once_handler
from tests.integration.private_scheduler import ENROLMENT, Isolated, isolated, submit
from tests.tcp_proxy import TcpProxy

__all__ = ["isolated"]  # the fixture, used by name

RECLAIM_IDLE_MS = 2000


@dataclass
class Node:
    """One worker, and the proxies its links go through (None: direct)."""

    worker: Worker
    redis: aioredis.Redis
    proxies: list[TcpProxy]

    def stall(self) -> None:
        for proxy in self.proxies:
            proxy.stall()

    def resume(self) -> None:
        for proxy in self.proxies:
            proxy.resume()


def _via(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    netloc[-1] = f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc="@".join(netloc)))


@dataclass
class Pair:
    iso: Isolated
    redis_url: str
    scheduler_port: int
    nodes: list[Node]

    async def node(self, name: str, *, proxied: bool, **timings: int) -> Node:
        """A worker in this process; timings: WorkerConfig's *_ms fields other than the defaults below."""
        redis_url, scheduler_addr, proxies = self.redis_url, f"127.0.0.1:{self.scheduler_port}", []
        if proxied:
            via_redis = TcpProxy(*_host_port(self.redis_url))
            via_scheduler = TcpProxy("127.0.0.1", self.scheduler_port)
            for proxy in (via_redis, via_scheduler):
                await proxy.start()
            redis_url, scheduler_addr = _via(self.redis_url, via_redis.port), f"127.0.0.1:{via_scheduler.port}"
            proxies = [via_redis, via_scheduler]
        config = WorkerConfig(
            worker_id=f"{name}-{uuid.uuid4().hex[:6]}",
            scheduler_addr=scheduler_addr,
            slots=2,
            heartbeat_interval_ms=200,
            reclaim_idle_ms=RECLAIM_IDLE_MS,
            reclaim_check_interval_ms=200,
            cancel_grace_ms=200,
            read_block_ms=200,
        )
        if timings:
            config = dataclasses.replace(config, **timings)
        redis = create_redis(RedisConfig(redis_url))
        worker = Worker(config, redis, ENROLMENT)
        await worker.start()
        node = Node(worker, redis, proxies)
        self.nodes.append(node)
        await eventually(lambda: _value(worker.connected), message=f"{name} in contact with the scheduler")
        return node


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


async def _value(value: Any) -> Any:
    return value


@pytest.fixture
async def pair(isolated: Isolated) -> AsyncIterator[Pair]:
    kwargs = isolated.redis.connection_pool.connection_kwargs
    username, password = kwargs.get("username") or "", kwargs.get("password")
    auth = f"{quote(username, safe='')}:{quote(password, safe='')}@" if password else ""
    redis_url = f"redis://{auth}{kwargs['host']}:{kwargs['port']}/{kwargs.get('db', 0)}"
    await ensure_dispatch_groups(isolated.redis, [interval_handler.KIND])
    port = int(isolated.address.rsplit(":", 1)[1])
    pair = Pair(isolated, redis_url, port, [])
    try:
        yield pair
    finally:
        for node in pair.nodes:
            node.resume()
            await node.worker.stop(drain_grace_s=0)
            await node.redis.aclose()
            for proxy in node.proxies:
                await proxy.cut()


async def test_a_worker_cut_off_stops_its_handler_before_another_worker_takes_the_task_over(pair: Pair) -> None:
    a = await pair.node("worker-a", proxied=True)
    (row,) = await submit(pair.iso, kind=interval_handler.KIND, workload_ms=600_000)
    task_id = str(row["id"])
    await eventually(lambda: _value((task_id, 1) in interval_handler.RUNS), message="attempt 1 running on A")
    b = await pair.node("worker-b", proxied=False)
    a.stall()
    await eventually(
        lambda: _value((task_id, 2) in interval_handler.RUNS), timeout_s=30, message="attempt 2 taken over by B"
    )
    assert any(key[0] == task_id for key in b.worker.running), "B runs the new attempt"
    await eventually(lambda: _value(not a.worker.running), message="A's handler stopped")
    first, second = interval_handler.RUNS[(task_id, 1)], interval_handler.RUNS[(task_id, 2)]
    # The two runs, as the handlers saw them: A's last tick came before B's first one.
    assert first[1] < second[0], f"attempt 1 ran until {first[1]:.3f}, attempt 2 from {second[0]:.3f}"
    assert not a.worker.finishing, "A reports nothing for the attempt it gave up"
    a.resume()
    await eventually(lambda: _value(a.worker.connected), timeout_s=30, message="A back in contact once the path heals")


async def test_a_worker_that_reaches_redis_but_not_the_scheduler_claims_no_entries(pair: Pair) -> None:
    a = await pair.node("worker-a", proxied=True)
    b = await pair.node("worker-b", proxied=False)
    a.proxies[1].stall()  # the scheduler's path only: Redis still answers A
    await eventually(lambda: _value(not a.worker.connected), message="A notices the scheduler is silent")
    # An entry a dead worker read and never started: reclaimable, and it should go to B, not A.
    (orphan,) = await submit(pair.iso, kind=interval_handler.KIND, workload_ms=600_000)
    stream = keys.dispatch_stream(interval_handler.KIND)
    await pair.iso.redis.xreadgroup(keys.DISPATCH_GROUP, "dead-worker", {stream: ">"}, count=10)
    (fresh,) = await submit(pair.iso, kind=interval_handler.KIND, workload_ms=600_000)
    ids = {str(orphan["id"]), str(fresh["id"])}

    async def all_on_b() -> bool:
        return ids <= {key[0] for key in b.worker.running}

    await eventually(all_on_b, timeout_s=30, message="B runs the new and the reclaimed task")
    pending = await pair.iso.redis.xpending_range(stream, keys.DISPATCH_GROUP, "-", "+", 100, a.worker.config.worker_id)
    assert pending == [], f"A holds entries it cannot start: {pending}"
    assert not a.worker.running and not a.worker.parked
    assert all(key[1] == 1 for key in interval_handler.RUNS if key[0] in ids), "each ran once"


async def test_a_worker_that_loses_only_redis_lets_its_task_go_to_another_worker(pair: Pair) -> None:
    """A keeps answering the scheduler but can no longer keep its entry: it stops its handler unreported and
    stops listing the task in its heartbeats, so B takes the task over (while A is alive and connected), with
    no overlap. Before, the scheduler deferred the takeover as long as A heartbeated: the task stayed RUNNING
    until the runtime sweep."""
    a = await pair.node("worker-a", proxied=True)
    (row,) = await submit(pair.iso, kind=interval_handler.KIND, workload_ms=600_000)
    task_id = str(row["id"])
    await eventually(lambda: _value((task_id, 1) in interval_handler.RUNS), message="attempt 1 running on A")
    b = await pair.node("worker-b", proxied=False)
    a.proxies[0].stall()  # Redis only: the scheduler still hears A's heartbeats
    await eventually(
        lambda: _value((task_id, 2) in interval_handler.RUNS), timeout_s=30, message="attempt 2 taken over by B"
    )
    assert any(key[0] == task_id for key in b.worker.running), "B runs the new attempt"
    assert a.worker.connected, "A stayed in contact with the scheduler throughout"
    first, second = interval_handler.RUNS[(task_id, 1)], interval_handler.RUNS[(task_id, 2)]
    assert first[1] < second[0], f"attempt 1 ran until {first[1]:.3f}, attempt 2 from {second[0]:.3f}"
    assert not a.worker.finishing, "A reports nothing for the attempt it gave up"


# Slower heartbeats for the lost reply: the stalled replies must not make the worker give up its stream (after 3
# heartbeats) before its start request is sent; the reclaim idle time keeps the fence margin above that.
LOST_REPLY_TIMINGS = {"heartbeat_interval_ms": 500, "reclaim_idle_ms": 6000}


async def _lose_the_start_reply(pair: Pair, *, cancel: bool) -> tuple[str, Node]:
    """A task whose start the scheduler commits on A (attempt 1) while its reply never reaches A: the replies are
    stalled, then the connections dropped and new ones refused, as when the scheduler dies right after its commit.
    B, a healthy worker, could reclaim the entry if A handed it back. Waits until A kept the entry (refreshed it
    after losing contact) or handed it back (B reclaimed it), cancels the task then when `cancel`, and lets A
    reconnect; returns the task's id and A once the task has ended."""
    await ensure_dispatch_groups(pair.iso.redis, [once_handler.KIND])
    a = await pair.node("worker-a", proxied=True, **LOST_REPLY_TIMINGS)
    to_scheduler = a.proxies[1]
    to_scheduler.stall(replies_only=True)  # A's requests reach the scheduler; nothing comes back
    (row,) = await submit(pair.iso, kind=once_handler.KIND, max_attempts=1)
    task_id = str(row["id"])

    async def started_on_a() -> bool:
        task = await pair.iso.pool.fetchrow("SELECT status, attempt, worker_id FROM tasks WHERE id = $1", task_id)
        assert task is not None
        return (task["status"], task["attempt"], task["worker_id"]) == (RUNNING, 1, a.worker.config.worker_id)

    await eventually(started_on_a, message="the scheduler committed attempt 1 on A")
    assert not _runs(task_id), "the reply never reached A"
    b = await pair.node("worker-b", proxied=False, **LOST_REPLY_TIMINGS)
    await to_scheduler.cut()  # as the scheduler's death does: the reply is lost, new connections are refused
    await eventually(lambda: _value(not a.worker.connected), message="A lost contact")
    lost_at = time.monotonic()
    stream = keys.dispatch_stream(once_handler.KIND)

    async def decided() -> bool:
        """B reclaimed the entry (A handed it back), or A refreshed it after losing contact (A kept it)."""
        (pending,) = await pair.iso.redis.xpending_range(stream, keys.DISPATCH_GROUP, "-", "+", 10)
        holder = pending["consumer"].decode()
        refreshed_since = pending["time_since_delivered"] < (time.monotonic() - lost_at) * 1000
        return holder == b.worker.config.worker_id or (holder == a.worker.config.worker_id and refreshed_since)

    await eventually(decided, message="A kept its entry or handed it back")
    if cancel:  # RUNNING -> CANCELLING: the stop command finds no stream to A
        await transitions.cancel(pair.iso.pool, pair.iso.owner, task_id=task_id)
    to_scheduler.resume()
    await to_scheduler.start()  # the scheduler is back (on the same port)

    async def ended() -> bool:
        status = await pair.iso.pool.fetchval("SELECT status FROM tasks WHERE id = $1", task_id)
        return status not in (QUEUED, RUNNING, CANCELLING)

    await eventually(ended, timeout_s=30, message="the task ended")
    return task_id, a


def _runs(task_id: str) -> list[tuple[str, int]]:
    return [run for run in once_handler.STARTS if run[0] == task_id]


async def _started(pair: Pair, task_id: str) -> list[tuple[int, str]]:
    """(attempt, worker id) of each start in the task's committed history."""
    history = await pair.iso.pool.fetch(
        "SELECT attempt, worker_id FROM task_history WHERE task_id = $1 AND to_status = $2 ORDER BY version",
        task_id,
        RUNNING,
    )
    return [(h["attempt"], h["worker_id"]) for h in history]


async def test_a_start_whose_reply_was_lost_is_resumed_not_handed_to_another_worker(pair: Pair) -> None:
    """A keeps the entry (refreshed, so B cannot reclaim it) and asks again once back in contact: the scheduler
    resumes the attempt it recorded, and the handler runs once. Handing the entry back let B take the task over
    as attempt 2 (here, with max_attempts 1: failed "no attempts left", never run)."""
    task_id, a = await _lose_the_start_reply(pair, cancel=False)
    task = await pair.iso.pool.fetchrow("SELECT status, attempt, error FROM tasks WHERE id = $1", task_id)
    assert task is not None
    assert (task["status"], task["attempt"], task["error"]) == (SUCCEEDED, 1, ""), dict(task)
    assert _runs(task_id) == [(task_id, 1)], "the handler ran once"
    assert await _started(pair, task_id) == [(1, a.worker.config.worker_id)]


async def test_a_lost_start_cancelled_meanwhile_ends_cancelled_without_running(pair: Pair) -> None:
    """The task is cancelled while A is out of contact: the resumed start is reported cancelled, and the handler
    never starts."""
    task_id, a = await _lose_the_start_reply(pair, cancel=True)
    task = await pair.iso.pool.fetchrow("SELECT status, attempt, error FROM tasks WHERE id = $1", task_id)
    assert task is not None
    assert (task["status"], task["attempt"]) == (CANCELLED, 1), dict(task)
    assert "before its handler started" in task["error"], task["error"]
    assert _runs(task_id) == [], "the handler never ran"
    assert await _started(pair, task_id) == [(1, a.worker.config.worker_id)]


async def test_a_worker_whose_every_slot_went_unanswered_reads_again_after_the_outage(pair: Pair) -> None:
    """A's one slot holds an entry whose start answer was lost; no scheduler answers within the outage grace, so
    A hands the entry back. Its slot is free again: once a scheduler answers, A takes work again (the entry it gave
    back, resumed, and a new task), rather than wait forever for a slot that nothing announces."""
    await ensure_dispatch_groups(pair.iso.redis, [once_handler.KIND])
    a = await pair.node("worker-a", proxied=True, slots=1, outage_grace_ms=1500, **LOST_REPLY_TIMINGS)
    to_scheduler = a.proxies[1]
    to_scheduler.stall(replies_only=True)
    (row,) = await submit(pair.iso, kind=once_handler.KIND, max_attempts=1)
    first = str(row["id"])

    async def started_on_a() -> bool:
        task = await pair.iso.pool.fetchrow("SELECT status, worker_id FROM tasks WHERE id = $1", first)
        assert task is not None
        return (task["status"], task["worker_id"]) == (RUNNING, a.worker.config.worker_id)

    await eventually(started_on_a, message="the scheduler committed attempt 1 on A")
    await to_scheduler.cut()
    await eventually(lambda: _value(not a.worker.connected), message="A lost contact")
    await eventually(
        lambda: _value(not a.worker.unanswered and not a.worker.offering), message="A handed its entry back"
    )
    assert a.worker.free_slots == 1
    to_scheduler.resume()
    await to_scheduler.start()
    (row,) = await submit(pair.iso, kind=once_handler.KIND, max_attempts=1)
    second = str(row["id"])

    async def both_succeeded() -> bool:
        statuses = await pair.iso.pool.fetch("SELECT status FROM tasks WHERE id = ANY($1::uuid[])", [first, second])
        return [s["status"] for s in statuses] == [SUCCEEDED, SUCCEEDED]

    await eventually(both_succeeded, timeout_s=30, message="A ran both tasks")
    assert _runs(first) == [(first, 1)] and _runs(second) == [(second, 1)], "each handler ran once"
