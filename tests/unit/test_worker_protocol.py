"""The worker's side of the WorkerService protocol, against a scripted scheduler and a real Valkey."""

from __future__ import annotations

import contextlib
import itertools
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis

import services.worker.builtin  # noqa: F401  (registers sleep, fail, spin)
from resilienttask.v1 import task_pb2
from resilienttask.worker.v1 import worker_pb2
from services.core import keys
from services.core.config import ConfigError, RedisConfig
from services.core.dispatch import DispatchEntry, entry_ref, publish, split_ref
from services.core.redis_client import create_redis
from services.core.settings import load
from services.core.worker_registry import BUILTIN_KINDS
from services.worker.config import FENCE_SLACK_MS, WorkerConfig
from services.worker.worker import Worker
from tests.conftest import Stores
from tests.helpers import eventually
from tests.unit.scripted_scheduler import Script, ScriptedScheduler, make_auth, serve

RUN = worker_pb2.START_DECISION_RUN
SKIP = worker_pb2.START_DECISION_SKIP
DEFER = worker_pb2.START_DECISION_DEFER


@pytest.fixture
async def redis(stores: Stores) -> AsyncIterator[aioredis.Redis]:
    """Database 3 of the session's Valkey: the stack's workers (database 0) never see these entries."""
    client = create_redis(RedisConfig(stores.redis_url.rsplit("/", 1)[0] + "/3"))
    await client.flushdb()
    yield client
    await client.aclose()


@dataclass
class Harness:
    worker: Worker
    scheduler: ScriptedScheduler
    script: Script
    redis: aioredis.Redis

    async def submit(self, kind: str = "sleep", *, workload_s: float = 0.0, max_runtime_s: float = 0.0) -> str:
        """Record a task in the script and publish its entry; returns the task id."""
        task = task_pb2.Task(id=str(uuid.uuid4()), kind=kind, attempt=1)
        task.workload.FromTimedelta(timedelta(seconds=workload_s))
        task.max_runtime.FromTimedelta(timedelta(seconds=max_runtime_s))
        task.payload.update({"note": "scripted"})
        self.script.tasks[task.id] = task
        (entry_id,) = await publish(self.redis, [DispatchEntry(task.id, str(uuid.uuid4()), kind)])
        self.entries[task.id] = entry_id
        return task.id

    def __post_init__(self) -> None:
        self.entries: dict[str, str] = {}

    def finish_of(self, task_id: str) -> worker_pb2.FinishItem | None:
        return next((f for f in self.script.finishes if f.task.task_id == task_id), None)

    async def finished(self, task_id: str) -> worker_pb2.FinishItem:
        return await eventually(lambda: _value(self.finish_of(task_id)), message=f"finish of {task_id}")

    async def running(self, task_id: str) -> int:
        """Wait until the worker runs the task; returns its fence."""

        async def probe() -> int | None:
            return next((key[1] for key in self.worker.running if key[0] == task_id), None)

        return await eventually(probe, message=f"{task_id} running")

    async def pending(self) -> dict[str, str]:
        """entry reference -> consumer, for every pending entry of the built-in kinds' groups."""
        found: dict[str, str] = {}
        for kind in BUILTIN_KINDS:
            rows = await self.redis.xpending_range(keys.dispatch_stream(kind), keys.DISPATCH_GROUP, "-", "+", 100)
            found.update({entry_ref(kind, r["message_id"].decode()): r["consumer"].decode() for r in rows})
        return found

    async def settled(self, task_id: str) -> bool:
        """The entry is acknowledged and deleted."""
        ref = self.entries[task_id]
        stream, entry_id = split_ref(ref)
        return ref not in await self.pending() and not await self.redis.xrange(stream, entry_id, entry_id)


async def _value(value: Any) -> Any:
    return value


def worker_config(port: int, **overrides: Any) -> WorkerConfig:
    settings: dict[str, Any] = {
        "worker_id": f"test-worker-{uuid.uuid4().hex[:6]}",
        "scheduler_addr": f"127.0.0.1:{port}",
        "slots": 4,
        "heartbeat_interval_ms": 100,
        "reclaim_idle_ms": 1000,
        "reclaim_check_interval_ms": 100,
        "cancel_grace_ms": 200,
        "drain_grace_s": 5.0,
        "read_block_ms": 100,
    }
    settings.update(overrides)
    return WorkerConfig(**settings)


@pytest.fixture
async def harness(redis: aioredis.Redis) -> AsyncIterator[Harness]:
    auth = make_auth()
    script = Script()
    server, scheduler, port = await serve(auth, script)
    worker = Worker(worker_config(port), redis, auth.enrolment)
    await worker.start()
    try:
        yield Harness(worker, scheduler, script, redis)
    finally:
        await worker.stop(drain_grace_s=0)
        await server.stop(None)


# -- the normal path ------------------------------------------------------------------------------------
async def test_a_task_runs_reports_progress_and_is_acknowledged_after_the_outcome(harness: Harness) -> None:
    task_id = await harness.submit(workload_s=0.4)
    done = await harness.finished(task_id)
    assert done.outcome == worker_pb2.OUTCOME_SUCCEEDED
    assert done.task.fence == harness.script.fences[task_id]
    assert done.result.struct_value["slept_s"] == pytest.approx(0.4)
    await eventually(lambda: harness.settled(task_id), message="entry acknowledged and deleted")

    (hello,) = harness.script.hellos
    assert hello.worker_id == harness.worker.config.worker_id and hello.slots == 4
    assert {"sleep", "fail", "spin"} <= set(hello.kinds)
    assert harness.script.subjects == {harness.worker.config.worker_id}, "every call carries the worker's token"
    assert harness.script.enrolments == [(harness.worker.config.worker_id, "enrol")], "enrolled once, by its id"
    (start,) = harness.script.starts
    assert start.entry_id == harness.entries[task_id] and start.dispatch_id
    mine = [p.progress for p in harness.script.progress if p.task.task_id == task_id]
    assert mine and mine == sorted(mine)
    assert any(h.tasks and h.tasks[0].task_id == task_id for h in harness.script.heartbeats)


class _PeakDict(dict[Any, Any]):
    """The worker's table of running handlers, remembering the most it ever held at once."""

    peak = 0

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self.peak = max(self.peak, len(self))


async def test_many_entries_start_in_one_call_up_to_the_free_slots(harness: Harness) -> None:
    # Heartbeats also list attempts whose outcome is still being reported, so they may hold more than the
    # slots; the handlers running at once may not.
    running = harness.worker.running = _PeakDict()
    ids = [await harness.submit(workload_s=0.2) for _ in range(6)]
    for task_id in ids:
        assert (await harness.finished(task_id)).outcome == worker_pb2.OUTCOME_SUCCEEDED
    assert len(harness.script.starts) == 6
    assert running.peak == 4


async def test_entries_added_together_start_in_one_call(harness: Harness) -> None:
    """A blocked read wakes on the first entry of a pipeline; the rest must not wait for a second call."""
    tasks = [task_pb2.Task(id=str(uuid.uuid4()), kind="sleep", attempt=1) for _ in range(4)]
    for task in tasks:
        harness.script.tasks[task.id] = task
    entries = [DispatchEntry(task.id, str(uuid.uuid4()), "sleep") for task in tasks]
    for task, entry_id in zip(tasks, await publish(harness.redis, entries), strict=True):
        harness.entries[task.id] = entry_id
    for task in tasks:
        assert (await harness.finished(task.id)).outcome == worker_pb2.OUTCOME_SUCCEEDED
    assert harness.script.start_calls == [4]


async def test_fail_is_reported_and_kinds_it_does_not_serve_never_reach_it(harness: Harness) -> None:
    unknown = await harness.submit("no-such-kind")
    failing = await harness.submit("fail")
    assert (await harness.finished(failing)).error == "RuntimeError: simulated failure of attempt 1"
    assert unknown not in [s.task_id for s in harness.script.starts]
    stream, entry_id = split_ref(harness.entries[unknown])
    assert await harness.redis.xrange(stream, entry_id, entry_id), "left in its kind's stream for a worker serving it"


async def test_a_malformed_entry_is_dropped_without_asking(harness: Harness) -> None:
    bad = await harness.redis.xadd(keys.dispatch_stream("sleep"), {"garbage": "1"})
    good = await harness.submit()
    await harness.finished(good)
    assert entry_ref("sleep", bad.decode()) not in await harness.pending()
    assert not await harness.redis.xrange(keys.dispatch_stream("sleep"), bad, bad)
    assert [s.task_id for s in harness.script.starts] == [good]


# -- start decisions ------------------------------------------------------------------------------------
async def test_skip_acknowledges_without_running(harness: Harness) -> None:
    task_id = str(uuid.uuid4())
    harness.script.decisions[task_id] = [SKIP]
    (entry_id,) = await publish(harness.redis, [DispatchEntry(task_id, str(uuid.uuid4()), "sleep")])
    harness.entries[task_id] = entry_id
    await eventually(lambda: harness.settled(task_id), message="skipped entry acknowledged")
    assert not harness.script.finishes


async def test_defer_keeps_the_entry_and_asks_again(harness: Harness) -> None:
    task_id = str(uuid.uuid4())
    harness.script.decisions[task_id] = [DEFER, DEFER, RUN]
    harness.script.tasks[task_id] = task_pb2.Task(id=task_id, kind="sleep", attempt=1)
    (entry_id,) = await publish(harness.redis, [DispatchEntry(task_id, str(uuid.uuid4()), "sleep")])
    harness.entries[task_id] = entry_id
    done = await harness.finished(task_id)
    assert done.outcome == worker_pb2.OUTCOME_SUCCEEDED
    # Deferred twice, run on the third ask, always with the same entry. A loaded machine may add one more ask
    # (a stream given up as silent is reopened and an unanswered ask repeated), never a different entry.
    asked = [s.entry_id for s in harness.script.starts]
    assert asked[:3] == [entry_id] * 3 and set(asked) == {entry_id}, asked


async def test_start_outage_keeps_the_entries_and_retries(harness: Harness) -> None:
    harness.script.fail_starts = 2
    task_id = await harness.submit()
    assert (await harness.finished(task_id)).outcome == worker_pb2.OUTCOME_SUCCEEDED
    assert harness.script.fail_starts == 0


# -- cancel commands ------------------------------------------------------------------------------------
async def test_user_cancel_stops_the_handler_reports_how_and_acknowledges(harness: Harness) -> None:
    task_id = await harness.submit(workload_s=600)
    fence = await harness.running(task_id)
    await harness.scheduler.push_cancel(task_id, fence, "cancelled")
    done = await harness.finished(task_id)
    assert done.outcome == worker_pb2.OUTCOME_CANCELLED
    assert done.error.startswith("stopped cooperatively after ")
    await eventually(lambda: harness.settled(task_id), message="cancelled entry acknowledged")


async def test_cancel_of_spin_reports_the_kill(harness: Harness) -> None:
    task_id = await harness.submit("spin", workload_s=600)
    fence = await harness.running(task_id)
    await eventually(lambda: _value(harness.worker.running[(task_id, fence)].attempt.pid), message="child up")
    await harness.scheduler.push_cancel(task_id, fence, "cancelled")
    assert (await harness.finished(task_id)).error == "killed after 200 ms grace"


async def test_superseded_stops_the_handler_without_report_or_acknowledgement(harness: Harness) -> None:
    task_id = await harness.submit(workload_s=600)
    fence = await harness.running(task_id)
    await harness.scheduler.push_cancel(task_id, fence, "superseded")
    await eventually(lambda: _value(not harness.worker.running), message="handler stopped")
    beats = len(harness.script.heartbeats)
    await eventually(lambda: _value(len(harness.script.heartbeats) > beats + 2), message="more heartbeats")
    assert not harness.script.finishes
    assert harness.entries[task_id] in await harness.pending(), "the entry now belongs to the new attempt's worker"
    assert all(not h.tasks for h in harness.script.heartbeats[beats:])


async def test_commands_for_other_fences_or_tasks_are_ignored(harness: Harness) -> None:
    task_id = await harness.submit(workload_s=0.5)
    fence = await harness.running(task_id)
    await harness.scheduler.push_cancel(task_id, fence + 1, "cancelled")
    await harness.scheduler.push_cancel(str(uuid.uuid4()), fence, "superseded")
    assert (await harness.finished(task_id)).outcome == worker_pb2.OUTCOME_SUCCEEDED


async def test_max_runtime_times_out(harness: Harness) -> None:
    task_id = await harness.submit(workload_s=600, max_runtime_s=0.3)
    done = await harness.finished(task_id)
    assert done.outcome == worker_pb2.OUTCOME_TIMED_OUT
    assert done.error.startswith("max_runtime of 0.3s exceeded; stopped cooperatively after ")


# -- finishing --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("reason", "acknowledged"), [("superseded", False), ("already finished", True)])
async def test_refused_outcomes_are_acknowledged_unless_superseded(
    harness: Harness, reason: str, acknowledged: bool
) -> None:
    task_id = await harness.submit()
    harness.script.refuse_finish[task_id] = reason
    await harness.finished(task_id)
    await eventually(lambda: _value(not harness.worker.finishing), message="outcome settled")
    assert await harness.settled(task_id) == acknowledged


async def test_finish_outage_is_retried_and_the_task_heartbeated_meanwhile(harness: Harness) -> None:
    harness.script.fail_finishes = 3
    task_id = await harness.submit()
    done = await harness.finished(task_id)
    assert done.outcome == worker_pb2.OUTCOME_SUCCEEDED
    await eventually(lambda: harness.settled(task_id), message="acknowledged after the outage")
    held = [h for h in harness.script.heartbeats if any(t.task_id == task_id for t in h.tasks)]
    assert held, "the task stayed in the heartbeats while its outcome waited"


# -- the stream and the pending list ---------------------------------------------------------------------
async def test_a_broken_stream_is_reopened_with_a_new_hello(harness: Harness) -> None:
    await eventually(lambda: _value(harness.script.hellos), message="first hello")
    await harness.scheduler.break_streams()
    await eventually(lambda: _value(len(harness.script.hellos) >= 2), message="hello after reconnect")
    task_id = await harness.submit(workload_s=600)
    fence = await harness.running(task_id)
    await harness.scheduler.push_cancel(task_id, fence, "cancelled")
    assert (await harness.finished(task_id)).outcome == worker_pb2.OUTCOME_CANCELLED


async def test_a_silent_scheduler_is_given_up_and_the_stream_reopened_once_it_answers(harness: Harness) -> None:
    await eventually(lambda: _value(harness.worker.connected), message="in contact")
    harness.script.silent = True  # the stream stays open, but no heartbeat is answered any more
    await eventually(lambda: _value(not harness.worker.connected), message="the silence noticed")
    hellos = len(harness.script.hellos)
    harness.script.silent = False
    await eventually(lambda: _value(harness.worker.connected), message="in contact again")
    assert len(harness.script.hellos) > hellos, "a new stream was opened"
    assert harness.worker.ready, "every loop of the worker survived the given-up stream"
    task_id = await harness.submit()
    assert (await harness.finished(task_id)).outcome == worker_pb2.OUTCOME_SUCCEEDED


async def test_heartbeats_keep_resetting_the_idle_time_of_held_entries(harness: Harness) -> None:
    task_id = await harness.submit(workload_s=600)
    await harness.running(task_id)
    entry_id = harness.entries[task_id]
    idle: list[int] = []

    stream, raw_id = split_ref(entry_id)

    async def reset_seen() -> bool:
        (row,) = await harness.redis.xpending_range(stream, keys.DISPATCH_GROUP, raw_id, raw_id, 1)
        idle.append(row["time_since_delivered"])
        return any(later < earlier for earlier, later in itertools.pairwise(idle))

    await eventually(reset_seen, interval_s=0.03, message="idle time reset by a heartbeat")
    assert (await harness.pending())[entry_id] == harness.worker.config.worker_id


async def test_a_dead_workers_entry_is_reclaimed(harness: Harness, redis: aioredis.Redis) -> None:
    task_id = str(uuid.uuid4())
    harness.script.tasks[task_id] = task_pb2.Task(id=task_id, kind="sleep", attempt=2)
    # Another consumer takes the entry and never heartbeats: it is reclaimed once idle for reclaim_idle_ms.
    (entry_id,) = await publish(redis, [DispatchEntry(task_id, str(uuid.uuid4()), "sleep")])
    harness.entries[task_id] = entry_id
    await redis.xreadgroup(keys.DISPATCH_GROUP, "dead-worker", {keys.dispatch_stream("sleep"): ">"}, count=100)
    assert (await harness.finished(task_id)).outcome == worker_pb2.OUTCOME_SUCCEEDED
    assert [s.entry_id for s in harness.script.starts] == [entry_id]
    await eventually(lambda: harness.settled(task_id), message="reclaimed entry acknowledged")


# -- leaving ------------------------------------------------------------------------------------------------
async def test_stop_drains_short_tasks_and_hands_back_long_ones(redis: aioredis.Redis) -> None:
    auth = make_auth()
    script = Script()
    server, scheduler, port = await serve(auth, script)
    worker = Worker(worker_config(port), redis, auth.enrolment)
    await worker.start()
    harness = Harness(worker, scheduler, script, redis)
    try:
        short = await harness.submit(workload_s=0.5)
        long = await harness.submit("spin", workload_s=600)
        await harness.running(short)
        long_fence = await harness.running(long)
        await eventually(lambda: _value(worker.running[(long, long_fence)].attempt.pid), message="child up")
        pid = worker.running[(long, long_fence)].attempt.pid
        await worker.stop(drain_grace_s=1.0)
        assert harness.finish_of(short) is not None and await harness.settled(short)
        handed = harness.finish_of(long)
        assert handed is not None and handed.outcome == worker_pb2.OUTCOME_HANDED_BACK, "unfinished: handed back"
        assert handed.task.fence == long_fence and "handed back" in handed.error
        assert await harness.settled(long), "its entry acknowledged once the scheduler queued the task again"
        assert pid is not None and _gone(pid)
    finally:
        await server.stop(None)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_a_worker_with_a_bad_secret_is_refused_and_keeps_retrying(redis: aioredis.Redis) -> None:
    script = Script()
    server, _scheduler, port = await serve(make_auth(), script)
    worker = Worker(worker_config(port), redis, make_auth().enrolment)
    await worker.start()
    try:
        await eventually(lambda: _value(script.refused > 0), message="tried to connect and was refused")
        task_id = str(uuid.uuid4())
        (ref,) = await publish(redis, [DispatchEntry(task_id, str(uuid.uuid4()), "sleep")])
        refusals = script.refused
        await eventually(lambda: _value(script.refused > refusals + 1), message="refused again after the entry came")
        # A worker the scheduler does not answer takes no entry: it stays for a worker that can start it.
        stream, entry_id = split_ref(ref)
        assert not await redis.xpending_range(stream, keys.DISPATCH_GROUP, entry_id, entry_id, 1)
        assert not worker.parked and not worker.running
        assert not script.hellos and not script.starts
    finally:
        await worker.stop(drain_grace_s=0)
        await server.stop(None)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "RTASK_SCHEDULER_ADDR"),
        ({"RTASK_WORKER_SLOTS": "0"}, "slots"),
        ({"RTASK_WORKER_SLOTS": "ten"}, "RTASK_WORKER_SLOTS"),
        ({"RTASK_WORKER_SLOTS": "1.5"}, "RTASK_WORKER_SLOTS"),
        ({"RTASK_WORKER_CANCEL_GRACE_MS": "-1"}, "RTASK_WORKER_CANCEL_GRACE_MS"),
        ({"RTASK_WORKER_RECLAIM_IDLE_MS": "1500"}, "reclaim_idle_ms"),
        # A self-fenced handler could still run (within its cancel grace) when its entry becomes reclaimable.
        ({"RTASK_WORKER_SELF_FENCE_MARGIN_MS": "700"}, "self_fence_margin_ms"),
        ({"RTASK_WORKER_CANCEL_GRACE_MS": "2800", "RTASK_WORKER_SELF_FENCE_MARGIN_MS": "3000"}, "self_fence_margin_ms"),
        # A margin that adapts to a long cancel grace must still leave healthy handlers their heartbeats.
        ({"RTASK_WORKER_RECLAIM_IDLE_MS": "3000", "RTASK_WORKER_CANCEL_GRACE_MS": "2000"}, "self_fence_margin_ms"),
    ],
)
def test_bad_configuration_is_refused(env: dict[str, str], message: str) -> None:
    if "RTASK_SCHEDULER_ADDR" not in env and message != "RTASK_SCHEDULER_ADDR":
        env = {**env, "RTASK_SCHEDULER_ADDR": "127.0.0.1:1"}
    with pytest.raises(ConfigError, match=message):
        load(WorkerConfig, env)


def test_configuration_from_the_environment() -> None:
    config = load(
        WorkerConfig,
        {
            "RTASK_SCHEDULER_ADDR": "edge:8080",
            "RTASK_WORKER_ID": "w1",
            "RTASK_WORKER_SLOTS": "3",
            "RTASK_WORKER_IMPORTS": " a.b , c ,",
        },
    )
    assert (config.worker_id, config.slots, config.imports) == ("w1", 3, ("a.b", "c"))
    assert config.reclaim_idle_ms == 10_000 and config.cancel_grace_ms == 500
    assert config.self_fence_margin_ms == 3000, "30 % of the reclaim idle time"
    # The margin never drops below the cancel grace plus the slack: with a 1 s grace, 1.25 s.
    raised = load(
        WorkerConfig,
        {
            "RTASK_SCHEDULER_ADDR": "x:1",
            "RTASK_WORKER_RECLAIM_IDLE_MS": "3000",
            "RTASK_WORKER_HEARTBEAT_MS": "500",
            "RTASK_WORKER_CANCEL_GRACE_MS": "1000",
        },
    )
    assert raised.self_fence_margin_ms == 1000 + FENCE_SLACK_MS
    assert load(WorkerConfig, {"RTASK_SCHEDULER_ADDR": "x:1"}).worker_id != ""


# -- a scheduler out of reach ------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def _worker_with(redis: aioredis.Redis, **overrides: Any) -> AsyncIterator[Harness]:
    auth = make_auth()
    script = Script()
    server, scheduler, port = await serve(auth, script)
    worker = Worker(worker_config(port, **overrides), redis, auth.enrolment)
    await worker.start()
    try:
        yield Harness(worker, scheduler, script, redis)
    finally:
        await worker.stop(drain_grace_s=0)
        await server.stop(None)


async def test_within_the_outage_grace_a_silent_scheduler_stops_no_handler(redis: aioredis.Redis) -> None:
    async with _worker_with(redis, outage_grace_ms=30_000) as harness:
        task_id = await harness.submit(workload_s=600)
        fence = await harness.running(task_id)
        harness.script.silent = True  # a scheduler restarting: no answer for longer than reclaim_idle_ms
        reclaim_idle_s = harness.worker.config.reclaim_idle_ms / 1000

        async def outage_outlived() -> bool:
            out_s = harness.worker.link.out_of_contact_s()
            return out_s is not None and out_s > 2 * reclaim_idle_s

        await eventually(outage_outlived, message="out of contact for two reclaim periods")
        assert (task_id, fence) in harness.worker.running, "the handler runs on through the outage"
        (row,) = await redis.xpending_range(*_stream_and_id(harness, task_id), 1)
        assert row["time_since_delivered"] < harness.worker.config.reclaim_idle_ms, "its entry stayed fresh"


async def test_past_the_outage_grace_a_cut_off_worker_stops_its_handler(redis: aioredis.Redis) -> None:
    async with _worker_with(redis, outage_grace_ms=0) as harness:
        task_id = await harness.submit(workload_s=600)
        fence = await harness.running(task_id)
        (row,) = await redis.xpending_range(*_stream_and_id(harness, task_id), 1)
        await eventually(
            lambda: _idle_below(harness, task_id, row["time_since_delivered"]),
            message="in contact, a grace of 0 still refreshes",
        )
        harness.script.silent = True
        await eventually(lambda: _value((task_id, fence) not in harness.worker.running), message="self-fenced")
        assert harness.finish_of(task_id) is None, "a self-fenced attempt reports nothing"


def _stream_and_id(harness: Harness, task_id: str) -> tuple[str, str, str, str]:
    stream, raw_id = split_ref(harness.entries[task_id])
    return stream, keys.DISPATCH_GROUP, raw_id, raw_id


async def _idle_below(harness: Harness, task_id: str, earlier_ms: int) -> bool:
    (row,) = await harness.redis.xpending_range(*_stream_and_id(harness, task_id), 1)
    return bool(row["time_since_delivered"] < earlier_ms)
