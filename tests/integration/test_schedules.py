"""Recurring schedules on the real stack, every call through Envoy: the calls, the bounds, ownership, the
policies after every scheduler stopped for a while, and one run per slot while schedulers are killed.

The last: a schedule every second fires exactly once per slot for a minute while two schedulers fire it and
one of them is killed (SIGKILL, mid-firing or not) and started again, then the other, over and over. Every
slot must have one batch of tasks (none missed, none twice) and each of them must run once.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import statistics
from collections import Counter
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest

from resilienttask.v1 import schedule_pb2, scheduler_pb2, task_pb2
from services.core.schedules import firing
from services.stack.stack import Stack
from tests.helpers import eventually
from tests.integration.schedule_stack import (
    MAX_SCHEDULES,
    MISFIRE_GRACE_MS,
    SCHEDULERS,
    User,
    db,
    edge_channel,
    every,
    lateness_s,
    new_user,
    restart_schedulers,
    schedule_stack,
    slot_of,
    stop_schedulers,
    tidy,
    user,
    wait_past,
)

__all__ = ["db", "edge_channel", "schedule_stack", "user"]  # the fixtures, used by name
pytestmark = pytest.mark.timeout(150)
SUCCEEDED = task_pb2.TASK_STATUS_SUCCEEDED
# The failover test: how long schedulers are killed and restarted, and its schedule's interval.
RUN_S = 60
SLOT = timedelta(seconds=1)


def _ts(stamp: object) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)  # type: ignore[attr-defined, no-any-return]


async def test_a_schedule_fires_pauses_resumes_triggers_updates_and_is_deleted(user: User) -> None:
    created = await user.create(every(1, name="heartbeat"))
    assert created.id and not created.paused and created.version == 1
    runs = [_ts(t) for t in created.next_runs]
    assert len(runs) == 5 and all(b - a == timedelta(seconds=1) for a, b in itertools.pairwise(runs))
    listed = await user.schedules.ListSchedules(schedule_pb2.ListSchedulesRequest(), metadata=user.md)
    assert [s.id for s in listed.schedules] == [created.id]

    # It fires on its slots: one task per slot, carrying the schedule's id, each run to the end.
    tasks = await eventually(lambda: _at_least(user, created.id, 2), timeout_s=20, message="two firings")
    assert tasks[0]["request_id"] == f"schedule:{created.id}:{_ms(runs[0])}"
    assert all(task["status"] == SUCCEEDED for task in tasks[:1])
    fetched = await user.tasks.GetTask(scheduler_pb2.GetTaskRequest(task_id=str(tasks[0]["id"])), metadata=user.md)
    assert fetched.task.schedule_id == created.id
    now = await user.get(created.id)
    assert now.fired >= 2 and now.last_batch_id and now.HasField("last_slot") and now.version > created.version
    assert now.last_status != task_pb2.TASK_STATUS_UNSPECIFIED

    # Paused: no slot fires, however many pass, and none of them is caught up after the resume.
    pause = schedule_pb2.PauseScheduleRequest(schedule_id=created.id)
    paused = (await user.schedules.PauseSchedule(pause, metadata=user.md)).schedule
    assert paused.paused and not paused.next_runs
    paused_at = datetime.now(UTC)
    fired_before = len(await user.fired(created.id))
    await wait_past(user.db, paused_at + timedelta(seconds=2.5))
    fired_while_paused = [t for t in await user.fired(created.id)][fired_before:]
    assert all(slot_of(t) < paused_at for t in fired_while_paused)  # type: ignore[operator]  # a firing under way
    resume = schedule_pb2.ResumeScheduleRequest(schedule_id=created.id)
    resumed = (await user.schedules.ResumeSchedule(resume, metadata=user.md)).schedule
    resumed_at = datetime.now(UTC)
    assert not resumed.paused and _ts(resumed.next_runs[0]) > resumed_at - timedelta(milliseconds=50)
    await eventually(lambda: _at_least(user, created.id, len(fired_while_paused) + fired_before + 1), timeout_s=10)
    slots = [slot_of(t) for t in await user.fired(created.id)]
    assert not [s for s in slots if s is not None and paused_at + timedelta(seconds=1) < s < resumed_at], slots

    # Trigger: fires now, outside the slots; the same request_id again returns the same tasks.
    triggered = await user.schedules.TriggerSchedule(
        schedule_pb2.TriggerScheduleRequest(schedule_id=created.id, request_id="once"), metadata=user.md
    )
    assert not triggered.skipped and len(triggered.tasks) == 1
    assert triggered.tasks[0].request_id == firing.trigger_key(created.id, "once")
    assert triggered.tasks[0].schedule_id == created.id
    again = await user.schedules.TriggerSchedule(
        schedule_pb2.TriggerScheduleRequest(schedule_id=created.id, request_id="once"), metadata=user.md
    )
    assert [t.id for t in again.tasks] == [t.id for t in triggered.tasks]

    # Update: the new spec, its slots counted from now.
    spec = every(2, name="slower", task_name="tock")
    updated = (
        await user.schedules.UpdateSchedule(
            schedule_pb2.UpdateScheduleRequest(schedule_id=created.id, spec=spec), metadata=user.md
        )
    ).schedule
    updated_at = datetime.now(UTC)
    assert updated.spec.name == "slower" and updated.spec.interval.ToSeconds() == 2
    first = _ts(updated.next_runs[0])
    assert updated_at < first + timedelta(milliseconds=50) <= updated_at + timedelta(seconds=2.1)
    assert _ts(updated.next_runs[1]) - first == timedelta(seconds=2)
    tock = await eventually(lambda: _named(user, created.id, "tock"), timeout_s=10, message="a firing of the update")
    assert slot_of(tock[0]) == first

    # Delete: the schedule is gone, the tasks it submitted stay.
    before = len(await user.fired(created.id))
    await user.schedules.DeleteSchedule(schedule_pb2.DeleteScheduleRequest(schedule_id=created.id), metadata=user.md)
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await user.get(created.id)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(await user.fired(created.id)) >= before


async def test_trigger_obeys_the_overlap_policy(user: User) -> None:
    spec = every(3600, name="hourly", overlap=schedule_pb2.OVERLAP_POLICY_SKIP, workload_ms=30_000)
    created = await user.create(spec)
    first = await user.schedules.TriggerSchedule(
        schedule_pb2.TriggerScheduleRequest(schedule_id=created.id), metadata=user.md
    )
    assert not first.skipped and len(first.tasks) == 1
    skipped = await user.schedules.TriggerSchedule(
        schedule_pb2.TriggerScheduleRequest(schedule_id=created.id), metadata=user.md
    )
    assert skipped.skipped and not skipped.tasks
    spec.overlap = schedule_pb2.OVERLAP_POLICY_CANCEL_PREVIOUS
    await user.schedules.UpdateSchedule(
        schedule_pb2.UpdateScheduleRequest(schedule_id=created.id, spec=spec), metadata=user.md
    )
    replaced = await user.schedules.TriggerSchedule(
        schedule_pb2.TriggerScheduleRequest(schedule_id=created.id), metadata=user.md
    )
    assert not replaced.skipped
    previous = await user.tasks.GetTask(scheduler_pb2.GetTaskRequest(task_id=first.tasks[0].id), metadata=user.md)
    assert previous.task.status in (task_pb2.TASK_STATUS_CANCELLED, task_pb2.TASK_STATUS_CANCELLING)
    schedule = await user.get(created.id)
    assert (schedule.fired, schedule.skipped) == (2, 1)
    assert schedule.last_batch_id == replaced.tasks[0].batch_id


async def test_jitter_delays_each_slot_by_the_offset_stored_for_it(user: User) -> None:
    spec = every(1, name="jittery")
    spec.jitter.FromMilliseconds(800)
    created = await user.create(spec)
    planned: dict[datetime, datetime] = {}  # slot -> when it is to fire, as the schedule row says

    async def three_fired() -> bool:
        row = await user.db.fetchrow("SELECT next_slot, fire_at FROM schedules WHERE id = $1", created.id)
        planned[row["next_slot"]] = row["fire_at"]
        return len(await user.fired(created.id)) >= 3

    await eventually(three_fired, timeout_s=15, interval_s=0.01, message="three jittered firings")
    tasks = await user.fired(created.id)
    offsets = [planned[slot_of(t)] - slot_of(t) for t in tasks if slot_of(t) in planned]  # type: ignore[operator]
    assert len(offsets) >= 2 and all(timedelta(0) <= o <= timedelta(milliseconds=800) for o in offsets), offsets
    for task in tasks:
        if slot_of(task) in planned:
            assert task["created_at"] >= planned[slot_of(task)], "fired before its jittered time"  # type: ignore[index]
    assert len(set(offsets)) > 1, "the same offset for every slot"


async def test_bad_inputs_are_refused_naming_the_field_with_nothing_stored(user: User) -> None:
    cases: list[tuple[schedule_pb2.ScheduleSpec, str]] = []
    bad_cron = every(60)
    bad_cron.cron.expression = "61 * * * *"
    cases.append((bad_cron, "spec.cron.expression"))
    bad_zone = every(60)
    bad_zone.cron.CopyFrom(schedule_pb2.CronTiming(expression="0 3 * * *", time_zone="Atlantis/Capital"))
    cases.append((bad_zone, "spec.cron.time_zone"))
    cases.append((every(0.5), "spec.interval"))
    cases.append((every(367 * 86400), "spec.interval"))
    jittery = every(10)
    jittery.jitter.FromSeconds(10)
    cases.append((jittery, "spec.jitter"))
    cases.append((every(60, catchup_limit=101), "spec.catchup_limit"))
    big = every(60)
    big.task.replicas = 51
    cases.append((big, "spec.task.replicas"))
    unnamed = every(60, task_name="")
    cases.append((unnamed, "spec.task.name"))
    for spec, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await user.create(spec)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert (refused.value.details() or "").startswith(f"{field}:"), refused.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await user.get("not-a-uuid")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "schedule_id" in (refused.value.details() or "")
    listed = await user.schedules.ListSchedules(schedule_pb2.ListSchedulesRequest(), metadata=user.md)
    assert not listed.schedules

    # The same request_id creates once; the bound on schedules per user is RESOURCE_EXHAUSTED beyond it.
    one = await user.create(every(3600), request_id="k1", paused=True)
    assert (await user.create(every(3600), request_id="k1", paused=True)).id == one.id
    for _ in range(MAX_SCHEDULES - 1):
        await user.create(every(3600), paused=True)
    with pytest.raises(grpc.aio.AioRpcError) as full:
        await user.create(every(3600), paused=True)
    assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "schedules" in (full.value.details() or "")
    page = await user.schedules.ListSchedules(schedule_pb2.ListSchedulesRequest(page_size=4), metadata=user.md)
    rest = await user.schedules.ListSchedules(
        schedule_pb2.ListSchedulesRequest(page_size=4, page_token=page.next_page_token), metadata=user.md
    )
    assert len(page.schedules) == 4 and len(rest.schedules) == MAX_SCHEDULES - 4 and not rest.next_page_token
    assert page.schedules[0].id == one.id


async def test_other_users_schedules_are_not_found_and_a_token_is_required(
    user: User, edge_channel: grpc.aio.Channel
) -> None:
    mine = await user.create(every(3600), paused=True)
    other = await new_user(edge_channel, user.db)
    try:
        sid = mine.id
        calls = [
            other.schedules.GetSchedule(schedule_pb2.GetScheduleRequest(schedule_id=sid), metadata=other.md),
            other.schedules.UpdateSchedule(
                schedule_pb2.UpdateScheduleRequest(schedule_id=sid, spec=every(60)), metadata=other.md
            ),
            other.schedules.PauseSchedule(schedule_pb2.PauseScheduleRequest(schedule_id=sid), metadata=other.md),
            other.schedules.ResumeSchedule(schedule_pb2.ResumeScheduleRequest(schedule_id=sid), metadata=other.md),
            other.schedules.TriggerSchedule(schedule_pb2.TriggerScheduleRequest(schedule_id=sid), metadata=other.md),
            other.schedules.DeleteSchedule(schedule_pb2.DeleteScheduleRequest(schedule_id=sid), metadata=other.md),
        ]
        for call in calls:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        listed = await other.schedules.ListSchedules(schedule_pb2.ListSchedulesRequest(), metadata=other.md)
        assert not listed.schedules
        with pytest.raises(grpc.aio.AioRpcError) as anonymous:
            await user.schedules.ListSchedules(schedule_pb2.ListSchedulesRequest())
        assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
        still = await user.get(sid)
        assert still.paused and still.version == mine.version and not await user.fired(sid)
    finally:
        await tidy(other)


async def test_catch_up_and_overlap_policies_after_every_scheduler_stopped(user: User, schedule_stack: Stack) -> None:
    """Schedules created while no scheduler runs miss their first slots; once the schedulers are back, each
    policy decides which of those fire.

    Until the schedulers are back and a slot has just passed, the test holds the schedules' rows locked (the
    schedulers skip locked rows): so the slot that just passed is on time when they fire, and every older one
    was missed, whatever the moment the schedulers' restart ended.
    """
    policies = schedule_pb2
    await stop_schedulers(schedule_stack)
    hold = await asyncpg.connect(schedule_stack.database_url)
    try:
        created_at = datetime.now(UTC)
        all_missed = {"catchup": policies.CATCHUP_POLICY_ALL, "catchup_limit": 3, "workload_ms": 30_000}
        # All at once, so their slots are close enough in phase for the release below.
        schedules = await asyncio.gather(
            user.create(every(1, name="skip", catchup=policies.CATCHUP_POLICY_SKIP)),
            user.create(every(1, name="latest", catchup=policies.CATCHUP_POLICY_LATEST)),
            # Every missed slot up to 3, and (ALLOW) all running at once.
            user.create(every(1, name="all", **all_missed)),  # type: ignore[arg-type]
            # The first catch-up firing runs; the slots after it are skipped while it is active.
            user.create(every(1, name="skip-overlap", overlap=policies.OVERLAP_POLICY_SKIP, **all_missed)),  # type: ignore[arg-type]
            # Each firing cancels the one before.
            user.create(every(1, name="cancel", overlap=policies.OVERLAP_POLICY_CANCEL_PREVIOUS, **all_missed)),  # type: ignore[arg-type]
        )
        skip, latest, allow, skip_overlap, cancel = schedules
        anchors = [_ts(s.next_runs[0]) - timedelta(seconds=1) for s in schedules]
        assert max(anchors) - min(anchors) < timedelta(seconds=0.35), "created too far apart for one phase"
        # Five slots pass with nobody to fire them.
        await wait_past(user.db, created_at + timedelta(seconds=5.5))
        locked = hold.transaction()
        await locked.start()
        await hold.fetch("SELECT id FROM schedules WHERE owner_id = $1 FOR UPDATE", user.account.user_id)
    finally:
        await restart_schedulers(schedule_stack)
    # Released 0.1 s after a slot of the last created schedule (0.1-0.45 s after one of each of the others):
    # the update of fire_at wakes the schedulers at the commit.
    now = datetime.now(UTC)
    release = max(anchors) + timedelta(seconds=math.ceil((now - max(anchors)).total_seconds()) + 0.1)
    await wait_past(user.db, release)
    await hold.execute("UPDATE schedules SET fire_at = fire_at WHERE owner_id = $1", user.account.user_id)
    await locked.commit()
    await hold.close()
    grace_s = MISFIRE_GRACE_MS / 1000
    missed_before = release - timedelta(seconds=1)

    async def fired_on_time(schedule_id: str) -> bool:
        return any(slot_of(t) > missed_before for t in await user.fired(schedule_id))  # type: ignore[operator]

    for schedule in (skip, latest, allow, cancel):
        await eventually(lambda s=schedule: fired_on_time(s.id), timeout_s=20, message=schedule.spec.name)

    skipped_tasks = await user.fired(skip.id)
    assert skipped_tasks and all(lateness_s(t) < grace_s for t in skipped_tasks), "SKIP fired a missed slot"
    assert (await user.get(skip.id)).skipped >= 5

    latest_tasks = await user.fired(latest.id)
    caught = [t for t in latest_tasks if lateness_s(t) > grace_s]
    assert len(caught) == 1, [(slot_of(t), lateness_s(t)) for t in latest_tasks]
    assert slot_of(caught[0]) == slot_of(latest_tasks[1]) - timedelta(seconds=1)  # type: ignore[operator]

    all_tasks = await user.fired(allow.id)
    caught = [t for t in all_tasks if lateness_s(t) > grace_s]
    slots = [slot_of(t) for t in all_tasks[:4]]
    assert len(caught) == 3, [(slot_of(t), lateness_s(t)) for t in all_tasks]
    # The newest 3 missed, oldest first, then the one on time.
    assert all(b - a == timedelta(seconds=1) for a, b in itertools.pairwise(slots)), slots  # type: ignore[operator]
    assert (await user.get(allow.id)).skipped >= 2  # the missed slots beyond the limit

    async def all_running() -> bool:
        statuses = [t["status"] for t in await user.fired(allow.id)]
        return sum(s == task_pb2.TASK_STATUS_RUNNING for s in statuses) >= 4

    await eventually(all_running, timeout_s=15, message="ALLOW: the firings run side by side")

    one = await user.fired(skip_overlap.id)
    assert len(one) == 1, [(slot_of(t), lateness_s(t)) for t in one]
    assert lateness_s(one[0]) > grace_s + 2  # the oldest of the three caught up; the rest were skipped for it
    assert (await user.get(skip_overlap.id)).skipped >= 5

    async def all_but_newest_cancelled() -> bool:
        tasks = await user.fired(cancel.id)
        return len(tasks) >= 4 and all(t["status"] == task_pb2.TASK_STATUS_CANCELLED for t in tasks[:-1])

    await eventually(all_but_newest_cancelled, timeout_s=15, message="CANCEL_PREVIOUS: each firing cancels the last")
    newest = (await user.fired(cancel.id))[-1]
    assert newest["status"] in (task_pb2.TASK_STATUS_QUEUED, task_pb2.TASK_STATUS_RUNNING)


def _ms(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


async def _at_least(who: User, schedule_id: str, count: int) -> list[object]:
    tasks = await who.fired(schedule_id)
    done = [t for t in tasks if t["status"] == SUCCEEDED]
    return tasks if len(done) >= count else []  # type: ignore[return-value]


async def _named(who: User, schedule_id: str, name: str) -> list[object]:
    return [t for t in await who.fired(schedule_id) if t["name"] == name]


async def test_every_slot_fires_once_while_schedulers_are_killed_and_restarted(
    user: User, schedule_stack: Stack
) -> None:
    # ALLOW and ALL: every slot must fire, even one a scheduler reached late, so a missing slot is a fault.
    spec = every(1, name="failover", catchup=schedule_pb2.CATCHUP_POLICY_ALL, catchup_limit=100)
    created = await user.create(spec)
    first_slot = created.next_runs[0].ToDatetime(tzinfo=UTC)
    end = datetime.now(UTC) + timedelta(seconds=RUN_S)
    rng = random.Random()
    kills = 0
    for name in itertools.cycle(SCHEDULERS):
        if datetime.now(UTC) > end - timedelta(seconds=6):
            break
        # A random moment within the next slot, so the kill sometimes lands in the middle of a firing.
        fired = len(await user.fired(created.id))
        await eventually(lambda n=fired: _more_than(user, created.id, n), timeout_s=20, message="a firing")
        await asyncio.sleep(rng.uniform(0, 1))  # the moment of the kill, not a wait for a condition
        await asyncio.to_thread(schedule_stack.processes[name].kill)
        kills += 1
        await asyncio.to_thread(schedule_stack.restart, name)
    await eventually(lambda: _fired_past(user, created.id, end), timeout_s=20, message="the last slot")
    pause = schedule_pb2.PauseScheduleRequest(schedule_id=created.id)
    paused = (await user.schedules.PauseSchedule(pause, metadata=user.md)).schedule

    tasks = await user.fired(created.id)
    slots = [slot_of(t) for t in tasks]
    assert None not in slots
    per_slot = Counter(slots)
    duplicates = {s: n for s, n in per_slot.items() if n > 1}
    last_slot = max(per_slot)  # type: ignore[type-var]
    expected = [first_slot + i * SLOT for i in range(int((last_slot - first_slot) / SLOT) + 1)]  # type: ignore[operator]
    missed = sorted(set(expected) - set(per_slot))  # type: ignore[type-var]
    late = sorted(lateness_s(t) for t in tasks)
    print(
        f"\nschedule failover: {kills} scheduler kills in {RUN_S} s; {len(expected)} slots, {len(per_slot)} fired, "
        f"{len(duplicates)} duplicated, {len(missed)} missed; insert after slot p50 "
        f"{statistics.median(late) * 1000:.0f} ms, p99 {late[int(len(late) * 0.99)] * 1000:.0f} ms, "
        f"max {late[-1] * 1000:.0f} ms"
    )
    assert kills >= 4
    assert not duplicates and not missed, (duplicates, missed)
    assert len(expected) >= RUN_S - 5
    assert paused.fired == len(tasks) and paused.skipped == 0, (paused.fired, paused.skipped, len(tasks))

    # Each of them runs once, to the end.
    async def all_succeeded() -> bool:
        statuses = [t["status"] for t in await user.fired(created.id)]
        return all(s == task_pb2.TASK_STATUS_SUCCEEDED for s in statuses)

    await eventually(all_succeeded, timeout_s=30, message="every firing succeeded")
    starts = await user.db.fetch(
        "SELECT h.task_id, count(*) AS starts FROM task_history h JOIN tasks t ON t.id = h.task_id "
        "WHERE t.schedule_id = $1 AND h.to_status = $2 GROUP BY h.task_id",
        created.id,
        task_pb2.TASK_STATUS_RUNNING,
    )
    assert len(starts) == len(tasks) and all(r["starts"] == 1 for r in starts), [dict(r) for r in starts]


async def _more_than(who: User, schedule_id: str, count: int) -> bool:
    return len(await who.fired(schedule_id)) > count


async def _fired_past(who: User, schedule_id: str, moment: datetime) -> bool:
    return any(slot_of(t) > moment for t in await who.fired(schedule_id))  # type: ignore[operator]
