"""The surplus lane in the database (migration 0018): an owner alone in the pool is let through beyond its fair cap
(to the surplus lane) instead of held; anyone else is held at the fair cap as before; the fixed ceiling holds
everyone; releases and due tasks choose their lane the same way. The full-stack behaviour is in
test_fair_dispatch.py; the streams and the workers' order in tests/unit/test_dispatch_lanes.py."""

from __future__ import annotations

import asyncpg

from services.core.dispatch import row_entry
from services.core.task_model import QUEUED
from services.core.transitions import bulk, due
from services.core.transitions import user as transitions
from services.scheduler import slot_cap
from tests.integration.test_delayed_db import due_now
from tests.integration.test_delayed_db import spec as delayed_spec
from tests.integration.test_transitions import database, new_user
from tests.integration.test_user_limits_db import OFF, counted, counters, pool, spec, start, succeed

__all__ = ["database", "pool"]  # the fixtures, used by name


async def set_cap(pool: asyncpg.Pool, fair: int, ceiling: int | None, lone: str | None) -> None:
    """What a scheduler writes (slot_cap.refresh_cap): the fair cap, the ceiling, the owner alone in the pool."""
    await pool.execute(
        "UPDATE slot_cap SET slots_per_user = $1, ceiling_slots = $2, lone_owner = $3::uuid", fair, ceiling, lone
    )


def lanes(rows: list[asyncpg.Record]) -> list[str]:
    return ["held" if r["held"] else "surplus" if r["surplus"] else "share" for r in rows]


async def test_an_owner_alone_goes_beyond_its_fair_cap_to_the_surplus_lane(pool: asyncpg.Pool) -> None:
    owner = await new_user(pool)
    await set_cap(pool, 2, None, owner)
    rows, _ = await transitions.submit(pool, owner, spec(5), OFF)
    assert lanes(rows) == ["share", "share", "surplus", "surplus", "surplus"]
    assert await pool.fetchval("SELECT count(*) FROM tasks WHERE held") == 0, "nothing held"
    assert [row_entry(r).surplus for r in rows] == [False, False, True, True, True]
    # Nobody active at all (the nil owner): whoever submits first is alone.
    first = await new_user(pool)
    await set_cap(pool, 2, None, slot_cap.NO_OWNER)
    rows, _ = await transitions.submit(pool, first, spec(3), OFF)
    assert lanes(rows) == ["share", "share", "surplus"]
    assert await counters(pool, first) == await counted(pool, first)


async def test_with_another_owner_active_the_hold_is_as_before(pool: asyncpg.Pool) -> None:
    alone, other = await new_user(pool), await new_user(pool)
    await set_cap(pool, 2, None, alone)
    rows, _ = await transitions.submit(pool, other, spec(4), OFF)
    assert lanes(rows) == ["share", "share", "held", "held"], "not the owner alone: held at the fair cap"
    await set_cap(pool, 2, None, None)  # several owners compete
    rows, _ = await transitions.submit(pool, alone, spec(3), OFF)
    assert lanes(rows) == ["share", "share", "held"]


async def test_the_ceiling_holds_the_owner_alone_too(pool: asyncpg.Pool) -> None:
    owner = await new_user(pool)
    await set_cap(pool, 2, 3, owner)
    rows, _ = await transitions.submit(pool, owner, spec(5), OFF)
    assert lanes(rows) == ["share", "share", "surplus", "held", "held"]
    # An end releases the next held task up to the ceiling, to the surplus lane (the owner is beyond its fair cap).
    await start(pool, rows[:2])
    await succeed(pool, [str(rows[0]["id"])])
    released = await pool.fetch("SELECT held, surplus FROM tasks WHERE id = ANY($1::uuid[])", [rows[3]["id"]])
    assert [(r["held"], r["surplus"]) for r in released] == [(False, True)]
    assert await counters(pool, owner) == await counted(pool, owner)


async def test_releases_choose_the_lane_by_the_room_under_the_fair_cap(pool: asyncpg.Pool) -> None:
    owner = await new_user(pool)
    await set_cap(pool, 1, None, None)
    rows, _ = await transitions.submit(pool, owner, spec(5), OFF)
    assert lanes(rows) == ["share", "held", "held", "held", "held"]
    # The others left; the owner is alone now: its held tasks go, one to the share lane (room under a fair cap of
    # 2), the rest beyond it.
    await set_cap(pool, 2, None, owner)
    assert await slot_cap.release_waiting(pool) == 4
    after = await pool.fetch("SELECT held, surplus FROM tasks WHERE owner_id = $1 ORDER BY replica_index", owner)
    assert lanes(list(after)) == ["share", "share", "surplus", "surplus", "surplus"]


async def test_retries_choose_their_lane_at_admission(pool: asyncpg.Pool) -> None:
    owner = await new_user(pool)
    await set_cap(pool, 1, None, owner)
    old, _ = await transitions.submit(pool, owner, spec(3), OFF)
    await transitions.cancel(pool, owner, batch_id=str(old[0]["batch_id"]))
    (kept,), _ = await transitions.submit(pool, owner, spec(1), OFF)
    assert lanes([kept]) == ["share"]
    retried = await transitions.retry(pool, owner, str(old[0]["id"]), OFF)
    assert retried is not None and retried[0]["status"] == QUEUED
    assert lanes([retried[0]]) == ["surplus"]
    many = await bulk.retry(pool, owner, [str(r["id"]) for r in old[1:]], OFF)
    assert lanes(list(many)) == ["surplus", "surplus"]
    await set_cap(pool, 1, None, None)
    await transitions.cancel(pool, owner, batch_id=str(old[0]["batch_id"]))
    many = await bulk.retry(pool, owner, [str(r["id"]) for r in old], OFF)
    assert sorted(lanes(list(many))) == ["held", "held", "held"], "competing: held, as before"


async def test_due_tasks_choose_their_lane_as_a_submission_does(pool: asyncpg.Pool) -> None:
    owner, other = await new_user(pool), await new_user(pool)
    await set_cap(pool, 2, None, owner)
    delayed, _ = await transitions.submit(pool, owner, delayed_spec(4, delay_ms=1), OFF)
    later, _ = await transitions.submit(pool, other, delayed_spec(3, delay_ms=1), OFF)
    await due_now(pool, owner)
    await due_now(pool, other)
    rows = await due.flip_due(pool, 100, 0, 5.0)
    by_owner = {
        who: sorted(lanes([r for r in rows if str(r["owner_id"]) == who]), key=["share", "surplus", "held"].index)
        for who in (owner, other)
    }
    assert by_owner == {owner: ["share", "share", "surplus", "surplus"], other: ["share", "share", "held"]}
    assert {r["id"] for r in rows} == {r["id"] for r in [*delayed, *later]}
