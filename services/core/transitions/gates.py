"""What may keep a queued task from starting besides a free worker: its kind paused, its concurrency key full,
its kind's rate limit used up. A task refused here is held in the database (queued, unpublished, with its
wait_reason) and its stream entry acknowledged; it is released by ResumeKind, by the end of a running task of
its key (migration 0016's trigger), or by the rate sweep when the window has room (services.scheduler.gates).

A task that may start is started by the one-statement start (fast_start.py), which checks the same controls in
that statement and holds nothing; what it leaves is checked here, inside the checked path's transaction, after
the task rows are locked:
- pause: rt_kind_gates takes each kind's lock shared, then reads the controls afresh (see migration 0016);
- concurrency keys: each key's start lock (every stripe of it: an exact count), then the count of its running
  tasks in a statement of its own (a fresh snapshot, so every start of the key that committed before is
  counted), both in one call (rt_key_count, migration 0019, which a start makes in its first statement); the
  locks are held until this start commits, so two starts of one key are counted one after the other. A start
  that must hold a task takes the keys' end locks too (after its owners' rows), which every end takes shared
  before it looks for held tasks: the held task is committed before, or the end is counted;
- rate limits: before the keys, so that no key's lock is held while Redis answers; a token taken by a task its
  key then holds is given back (services.core.rate_limits), so only tasks that start keep one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import asyncpg

from resilienttask.v1 import task_pb2
from services.core.rate_limits import RateLimit, Taken, TakenAhead
from services.core.task_model import QUALIFIED_TASK_COLUMNS

CONCURRENCY_KEY = task_pb2.WAIT_REASON_CONCURRENCY_KEY
RATE_LIMIT = task_pb2.WAIT_REASON_RATE_LIMIT
KIND_PAUSED = task_pb2.WAIT_REASON_KIND_PAUSED
HELD_REASONS: dict[int, str] = {
    CONCURRENCY_KEY: "concurrency key full",
    RATE_LIMIT: "rate limit",
    KIND_PAUSED: "kind paused",
}


class Limiter(Protocol):
    """The rate-limit windows (rate_limits.RedisLimiter): take starts, and give back those that did not happen;
    it also keeps the limits last read of each kind (for taking ahead)."""

    def remember(self, limits: Mapping[str, RateLimit | None]) -> None:
        """The kinds' rate limits as just read under their locks (None: no limit)."""

    async def take_ahead(self, wanted: Mapping[str, int]) -> dict[str, TakenAhead]:
        """Before a start's transaction: up to `wanted` starts of each kind last known to be limited."""

    async def take(self, wanted: Sequence[tuple[str, int, RateLimit]]) -> list[Taken]:
        """For each (kind, starts wanted, limit), what was granted."""

    async def give_back(self, unused: Sequence[tuple[str, Sequence[int]]]) -> None:
        """Remove these members (of each kind's window) granted to starts that did not happen."""


RATE_HELD_CHANNEL = "rt_rate_held"
# Without a limiter (no Redis at hand), a rate-limited task waits this long and is checked again.
NO_LIMITER_WAIT_MS = 1000


@dataclass(frozen=True)
class Hold:
    reason: int
    # When the task is worth trying again (rate limits); 0: when released.
    wait_ms: int = 0


def _order(row: asyncpg.Record) -> tuple[int, object, str]:
    """Who goes first among tasks competing for a key or a rate: higher priority, then older."""
    return (-row["priority"], row["created_at"], str(row["id"]))


@dataclass(frozen=True)
class Control:
    """A kind's controls that keep its tasks from starting unchecked (a row of rt_kind_gates)."""

    paused_at: object | None
    rate_starts: int | None
    rate_period_ms: int | None

    def rate(self) -> RateLimit | None:
        if self.rate_starts is None or self.rate_period_ms is None:
            return None
        return RateLimit(self.rate_starts, self.rate_period_ms)


# Prefix of the columns a start's first statement adds to each task row: its kind's controls (controls_of).
GATED = "gate"


def controls_of(rows: Iterable[asyncpg.Record]) -> dict[str, Control]:
    """The controls read with the rows (rt_kind_gates in the same statement, after the rows were locked)."""
    return {
        row["kind"]: Control(row[f"{GATED}_paused_at"], row[f"{GATED}_rate_starts"], row[f"{GATED}_rate_period_ms"])
        for row in rows
        if row[GATED]
    }


# Running tasks of each (owner, key), counted under the keys' locks.
KeyCounts = Mapping[tuple[object, str], int]


@dataclass(frozen=True)
class Grant:
    """Rate tokens a start holds: for its kind's limit, what the window granted, the tasks (in the order they go)
    it was for (none: taken ahead for nothing)."""

    kind: str
    limit: RateLimit
    taken: Taken
    rows: Sequence[asyncpg.Record]


@dataclass
class Checked:
    """What check decided: the tasks that must wait (and why), and the rate tokens it holds."""

    holds: dict[str, Hold]
    grants: list[Grant]

    def ahead(self) -> dict[str, TakenAhead]:
        """The tokens, for a second check of the same tasks (after the first was rolled back)."""
        return {g.kind: TakenAhead(g.limit, g.taken) for g in self.grants}

    async def settle(self, limiter: Limiter | None) -> None:
        """Give back the tokens of the starts that do not happen (a key held the task, or it was taken for
        nothing); called once the decisions are final."""
        if limiter is None:
            return
        unused = []
        for g in self.grants:
            used = sum(str(r["id"]) not in self.holds for r in g.rows[: g.taken.granted])
            unused.append((g.kind, g.taken.members(g.taken.granted - used)))
        await limiter.give_back(unused)


async def check(
    conn: asyncpg.Connection,
    rows: Sequence[asyncpg.Record],
    limiter: Limiter | None,
    controls: dict[str, Control] | None = None,
    ahead: Mapping[str, TakenAhead] | None = None,
    key_counts: KeyCounts | None = None,
) -> Checked:
    """Of queued tasks about to start (rows locked by the caller's transaction): those that must wait, and why.

    controls: those of the rows' kinds, when the caller read them with rt_kind_gates after locking the rows.
    ahead: rate tokens the caller took before its transaction (take_ahead), used here if the kind's limit is the
    one they were taken for. key_counts: the running tasks of the rows' keys, when the caller locked the keys and
    counted them (rt_key_count) after the rows and the kinds; without them, the owners' rows are locked here,
    then the keys (see the caller, start.py, for why that order).
    The caller settles the tokens (Checked.settle) once its decisions are final."""
    holds: dict[str, Hold] = {}
    if controls is None:
        controls = {
            r["kind"]: Control(r["paused_at"], r["rate_starts"], r["rate_period_ms"])
            for r in await conn.fetch(
                "SELECT kind, paused_at, rate_starts, rate_period_ms FROM rt_kind_gates($1::text[])",
                sorted({row["kind"] for row in rows}),
            )
        }
    for row in rows:
        control = controls.get(row["kind"])
        if control is not None and control.paused_at is not None:
            holds[str(row["id"])] = Hold(KIND_PAUSED)
    # Rate tokens before the keys, so that no key's lock is held while Redis answers: a token granted to a task
    # its key then holds is given back (Checked.settle).
    limited: dict[str, list[asyncpg.Record]] = {}
    for row in sorted(rows, key=_order):
        control = controls.get(row["kind"])
        if str(row["id"]) not in holds and control is not None and control.rate() is not None:
            limited.setdefault(row["kind"], []).append(row)
    if limiter is not None:
        limiter.remember(
            {row["kind"]: controls[row["kind"]].rate() if row["kind"] in controls else None for row in rows}
        )
    grants = await _check_rates(limited, controls, limiter, holds, ahead or {})
    keyed = sorted((r for r in rows if r["concurrency_key"] is not None and str(r["id"]) not in holds), key=_order)
    if keyed and key_counts is None:
        # Owners' rows before keys, as an end does (migration 0016): a hold below locks its owner's row (the
        # slot-share counters), and must not wait for it while holding a key an end is waiting for.
        await conn.execute(
            "SELECT 1 FROM users WHERE id = ANY($1::uuid[]) ORDER BY id FOR NO KEY UPDATE",
            sorted({row["owner_id"] for row in rows}),
        )
        key_counts = await count_keys(conn, keyed)
    _check_keys(keyed, key_counts or {}, holds)
    return Checked(holds, grants)


async def count_keys(conn: asyncpg.Connection, keyed: Sequence[asyncpg.Record]) -> dict[tuple[object, str], int]:
    """Lock the rows' keys (start and end locks: the caller may hold a task) and count their running tasks."""
    keys = sorted({(row["owner_id"], row["concurrency_key"]) for row in keyed})
    return {
        (r["owner_id"], r["concurrency_key"]): r["running"]
        for r in await conn.fetch(
            "SELECT * FROM rt_key_count($1::uuid[], $2::text[], true)", [k[0] for k in keys], [k[1] for k in keys]
        )
    }


def _check_keys(keyed: Sequence[asyncpg.Record], key_counts: KeyCounts, holds: dict[str, Hold]) -> None:
    """Hold the keyed tasks (in the order they go) that do not fit under their key's limit."""
    running = dict(key_counts)
    for row in keyed:
        key = (row["owner_id"], row["concurrency_key"])
        if running.get(key, 0) < row["concurrency_limit"]:
            running[key] = running.get(key, 0) + 1
        else:
            holds[str(row["id"])] = Hold(CONCURRENCY_KEY)


async def _check_rates(
    limited: dict[str, list[asyncpg.Record]],
    controls: dict[str, Control],
    limiter: Limiter | None,
    holds: dict[str, Hold],
    ahead: Mapping[str, TakenAhead],
) -> list[Grant]:
    """Hold the tasks (in the order they go) the kinds' windows have no room for; returns the grants this start
    holds."""
    grants: list[Grant] = []
    wanted: list[tuple[str, int, RateLimit]] = []
    for kind, rows in limited.items():
        limit = controls[kind].rate()
        assert limit is not None
        taken = ahead.get(kind)
        if taken is not None and taken.limit == limit:
            grants.append(Grant(kind, limit, taken.taken, rows))
        else:
            wanted.append((kind, len(rows), limit))
    # Taken ahead for nothing (no task of the kind needs one, or its limit changed): back first, so that they do
    # not stand in the way of the tokens taken now.
    used = {g.kind for g in grants}
    unusable = [(kind, t.taken) for kind, t in ahead.items() if kind not in used]
    if unusable and limiter is not None:
        await limiter.give_back([(kind, taken.members(taken.granted)) for kind, taken in unusable])
    if wanted:
        taken_now = (
            await limiter.take(wanted) if limiter is not None else [Taken(0, 0, NO_LIMITER_WAIT_MS) for _ in wanted]
        )
        grants += [
            Grant(kind, limit, got, limited[kind]) for (kind, _n, limit), got in zip(wanted, taken_now, strict=True)
        ]
    for grant in grants:
        for row in grant.rows[grant.taken.granted :]:
            holds[str(row["id"])] = Hold(RATE_LIMIT, grant.taken.wait_ms)
    return grants


# A held task gets a new dispatch id: its acknowledged entry, and any duplicate of it, can no longer start it.
_HOLD = f"""
UPDATE tasks SET held = true, wait_reason = t.reason, published = false, published_at = NULL,
    dispatch_id = gen_random_uuid(), publish_after = now() + make_interval(secs => t.wait_ms / 1000.0)
FROM unnest($1::uuid[], $2::smallint[], $3::bigint[]) AS t(id, reason, wait_ms)
WHERE tasks.id = t.id AND tasks.status = 1 AND NOT tasks.held
RETURNING {QUALIFIED_TASK_COLUMNS}
"""


async def hold(conn: asyncpg.Connection, holds: dict[str, Hold]) -> dict[str, asyncpg.Record]:
    """Record the holds (rows locked by the caller); returns the rows as they now are."""
    if not holds:
        return {}
    ids = list(holds)
    rows = await conn.fetch(_HOLD, ids, [holds[i].reason for i in ids], [holds[i].wait_ms for i in ids])
    if any(h.reason == RATE_LIMIT for h in holds.values()):
        # The rate sweep sleeps until the next refill it knows of: tell it of these (delivered at commit).
        await conn.execute("SELECT pg_notify($1, '')", RATE_HELD_CHANNEL)
    return {str(r["id"]): r for r in rows}
