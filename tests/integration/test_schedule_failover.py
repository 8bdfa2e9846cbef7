"""A schedule every second fires exactly once per slot for a minute while its schedulers are killed in turn.

Two schedulers fire the schedule; one of them is killed (SIGKILL, mid-firing or not) and started again, then
the other, over and over. Every slot must have one batch of tasks — none missed, none twice — and each of
them run once.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import statistics
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from resilienttask.v1 import schedule_pb2, task_pb2
from services.stack.stack import Stack
from tests.helpers import eventually
from tests.integration.schedule_stack import (
    SCHEDULERS,
    User,
    db,
    edge_channel,
    every,
    lateness_s,
    schedule_stack,
    slot_of,
    user,
)

__all__ = ["db", "edge_channel", "schedule_stack", "user"]  # the fixtures, used by name
RUN_S = 60
SLOT = timedelta(seconds=1)


@pytest.mark.timeout(150)
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
    assert kills >= 6
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
