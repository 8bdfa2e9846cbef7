"""The start transition: a worker asks to run the tasks of the stream entries it read.

Only the entry carrying a task's current dispatch_id may start it, and each started attempt gets a new
fence (lease token), so a reclaimed attempt supersedes the old one and the old worker's reports are refused.
A task another worker holds is taken over only when the schedulers' own record says that holder went silent
(HolderCheck): a worker's word (an entry it claimed as idle) is not enough, since a worker can claim any entry.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

import asyncpg

from resilienttask.v1 import task_pb2
from resilienttask.worker.v1 import worker_pb2
from services.core import task_metrics
from services.core.dispatch import parse_ref
from services.core.events import TaskChange
from services.core.rate_limits import TakenAhead
from services.core.task_model import (
    CANCELLED,
    CANCELLING,
    FAILED,
    QUALIFIED_TASK_COLUMNS,
    QUEUED,
    RUNNING,
    SCHEDULED,
    TASK_COLUMNS,
    TERMINAL,
    row_to_task,
    rows_to_tasks,
)
from services.core.transitions import gates
from services.core.transitions.fast_start import START_SET, start_fast
from services.core.transitions.rules import (
    HistoryEntry,
    RunningRef,
    change_for,
    check_transition,
    history_for,
    history_of,
    insert_history,
    is_uuid,
    valid_uuids,
)

RUN = worker_pb2.START_DECISION_RUN
SKIP = worker_pb2.START_DECISION_SKIP
DEFER = worker_pb2.START_DECISION_DEFER


# Of the tasks other workers hold (by holder: task id, epoch seconds its attempt started), those whose holder
# the schedulers saw let go: gone silent, or no longer listing the task. Called only for takeovers, which are
# rare (a worker died or lost Redis).
HolderCheck = Callable[[Mapping[str, Collection[tuple[str, float]]]], Awaitable[set[str]]]


async def no_task_released(_held: Mapping[str, Collection[tuple[str, float]]]) -> set[str]:
    """For callers with no record of heartbeats: never take a task from another worker."""
    return set()


@dataclass
class StartOutcome:
    results: list[worker_pb2.StartResult]
    changes: list[TaskChange]
    superseded: list[RunningRef]


def _skip(task_id: str, reason: str) -> worker_pb2.StartResult:
    return worker_pb2.StartResult(task_id=task_id, decision=SKIP, reason=reason)


# The checked path's first statement: the rows, locked in id order; the controls of their queued tasks' kinds
# (rt_kind_gates, after the rows are locked, as in fast_start.FAST_START); and, when $2, the keys of their queued
# tasks whose kind is not paused, locked (every stripe of their start locks, no end lock: this pass never holds)
# and counted (rt_key_count, its arguments read from the locked rows and the kinds' controls, so after every row
# and every kind is locked: the order of the one-statement start). Each row comes with its kind's controls
# (gates.controls_of) and its key's running tasks.
_LOCK_AND_GATE = f"""
WITH locked AS (SELECT {TASK_COLUMNS} FROM tasks WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE),
gated AS (SELECT * FROM rt_kind_gates((SELECT array_agg(DISTINCT kind) FROM locked WHERE status = {QUEUED}))),
wanted AS (
    SELECT array_agg(owner_id ORDER BY id) AS owners, array_agg(concurrency_key ORDER BY id) AS keys FROM locked
    WHERE $2 AND status = {QUEUED} AND concurrency_key IS NOT NULL
    AND kind NOT IN (SELECT kind FROM gated WHERE paused_at IS NOT NULL)
),
counted AS (SELECT r.* FROM wanted, rt_key_count(wanted.owners, wanted.keys, false) AS r)
SELECT locked.*, gated.kind IS NOT NULL AS {gates.GATED}, gated.paused_at AS {gates.GATED}_paused_at,
    gated.rate_starts AS {gates.GATED}_rate_starts, gated.rate_period_ms AS {gates.GATED}_rate_period_ms,
    coalesce(counted.running, 0) AS key_running
FROM locked LEFT JOIN gated ON gated.kind = locked.kind
LEFT JOIN counted ON counted.owner_id = locked.owner_id AND counted.concurrency_key = locked.concurrency_key
"""


async def start_batch(
    pool: asyncpg.Pool,
    worker_id: str,
    items: Sequence[worker_pb2.StartItem],
    holders: HolderCheck = no_task_released,
    limiter: gates.Limiter | None = None,
) -> StartOutcome:
    """Decide for each entry whether this worker runs the task, and record the new attempts.

    Fresh dispatches of queued tasks (nearly every entry) start in one statement (fast_start), their keys and
    kinds' controls checked in it; the rest (a takeover, a duplicate, a task that must be held) are decided one
    by one under row locks. `limiter` takes rate-limit tokens (rate_limits.take on Redis).
    """
    first: dict[str, worker_pb2.StartItem] = {}
    for item in items:
        if is_uuid(item.task_id) and is_uuid(item.dispatch_id):
            first.setdefault(item.task_id, item)
    started: dict[str, asyncpg.Record] = {}
    if first:
        rows = await start_fast(pool, worker_id, list(first.values()), limiter, _kinds_named(first.values()))
        started = {str(r["id"]): r for r in rows}
        task_metrics.started(rows)
    rest = [item for item in items if first.get(item.task_id) is not item or item.task_id not in started]
    checked = await _start_checked(pool, worker_id, rest, holders, limiter) if rest else StartOutcome([], [], [])
    tasks = dict(zip(started, rows_to_tasks(started.values()), strict=True))
    later = iter(checked.results)
    results = [
        _run(started[item.task_id], tasks[item.task_id])
        if first.get(item.task_id) is item and item.task_id in started
        else next(later)
        for item in items
    ]
    changes = [TaskChange(str(row["owner_id"]), tasks[i], QUEUED) for i, row in started.items()] + checked.changes
    return StartOutcome(results, changes, checked.superseded)


def _run(row: asyncpg.Record, task: task_pb2.Task) -> worker_pb2.StartResult:
    return worker_pb2.StartResult(task_id=str(row["id"]), decision=RUN, task=task, fence=row["fence"])


async def _start_checked(
    pool: asyncpg.Pool,
    worker_id: str,
    items: Sequence[worker_pb2.StartItem],
    holders: HolderCheck,
    limiter: gates.Limiter | None,
) -> StartOutcome:
    """Decide for each entry whether this worker runs the task, and record the new attempts.

    Only the entry carrying the task's current dispatch_id may start it. A RUNNING task is taken over
    only through the very entry that started it (XAUTOCLAIM gave it to us because its worker stopped
    heartbeating); any other entry for it is a duplicate publish and is skipped. Even through that entry, a
    task is taken from its holder only once the schedulers saw the holder go silent; until then it is deferred.
    """
    ids = valid_uuids([item.task_id for item in items])
    # Rate tokens for the kinds the entries name, before the rows and keys are locked (gates.check uses them if
    # the kind's limit is still the one they were taken for, and the rest is given back).
    ahead = await limiter.take_ahead(_kinds_named(items)) if limiter is not None else {}
    async with pool.acquire() as conn:
        # The transaction, and a savepoint before anything is locked, in one round trip.
        await conn.execute("BEGIN; SAVEPOINT rt_start")
        try:
            outcome, checked = await _decide_and_record(conn, worker_id, items, ids, holders, limiter, ahead)
            await conn.execute("COMMIT")
        except BaseException:
            if not conn.is_closed() and conn.is_in_transaction():
                with contextlib.suppress(asyncpg.PostgresError, OSError):
                    await conn.execute("ROLLBACK")
            raise
    await checked.settle(limiter)
    return outcome


async def _lock_and_decide(
    conn: asyncpg.Connection,
    worker_id: str,
    items: Sequence[worker_pb2.StartItem],
    ids: list[str],
    holders: HolderCheck,
    lock_keys: bool,
) -> tuple[dict[str, asyncpg.Record], list[tuple[worker_pb2.StartItem, str, str]]]:
    """The rows (locked, with their kinds' controls, and with their keys locked and counted when lock_keys), and
    what to do with each entry: (item, action, detail)."""
    rows = {str(r["id"]): r for r in await conn.fetch(_LOCK_AND_GATE, ids, lock_keys)}
    # Asked only about holders whose task this request would take (under the row locks, so the holder
    # cannot report meanwhile): one Redis round trip, on the rare path of a dead worker's entries.
    others: dict[str, list[tuple[str, float]]] = {}
    for r in rows.values():
        if r["status"] in (RUNNING, CANCELLING) and r["worker_id"] != worker_id:
            started = r["started_at"].timestamp() if r["started_at"] is not None else 0.0
            others.setdefault(r["worker_id"], []).append((str(r["id"]), started))
    released = await holders(others) if others else set()
    return rows, [(item, *_decide(rows.get(item.task_id), item, worker_id, released)) for item in items]


async def _decide_and_record(
    conn: asyncpg.Connection,
    worker_id: str,
    items: Sequence[worker_pb2.StartItem],
    ids: list[str],
    holders: HolderCheck,
    limiter: gates.Limiter | None,
    ahead: Mapping[str, TakenAhead],
) -> tuple[StartOutcome, gates.Checked]:
    """Inside the transaction, after its savepoint.

    First with the keys locked in the first statement (rows, then kinds, then keys): when every task fits, the
    start never locks its owners' rows, so it never waits for the owners' ends. A hold changes its owner's
    slot-share counters, so locks the owner's row, and an end locks its owners' rows before the keys (its release
    trigger fires after the counters' one, migration 0016): holding a key while waiting for an owner's row could
    deadlock. So when something must be held while keys are locked, everything is rolled back to the savepoint
    (the rows', kinds' and keys' locks given back) and decided again in the order rows, kinds, owners, keys,
    with the rate tokens already taken."""
    rows, decisions = await _lock_and_decide(conn, worker_id, items, ids, holders, lock_keys=True)
    fresh_rows = _fresh(rows, decisions)
    keys_locked = any(r["concurrency_key"] is not None and r["status"] == QUEUED for r in rows.values())
    controls = gates.controls_of(rows.values())
    checked = await gates.check(conn, fresh_rows, limiter, controls, ahead, _key_counts(rows.values()))
    if checked.holds and keys_locked:
        await conn.execute("ROLLBACK TO SAVEPOINT rt_start")
        rows, decisions = await _lock_and_decide(conn, worker_id, items, ids, holders, lock_keys=False)
        fresh_rows = _fresh(rows, decisions)
        checked = await gates.check(conn, fresh_rows, limiter, gates.controls_of(rows.values()), checked.ahead())
    holds = checked.holds
    decisions = [(i, "hold", "") if a == "run" and i.task_id in holds else (i, a, d) for i, a, d in decisions]
    held = await gates.hold(conn, holds)
    results: list[worker_pb2.StartResult] = []
    changes: list[TaskChange] = []
    history: list[HistoryEntry] = []
    superseded: list[RunningRef] = []
    runs: dict[str, tuple[worker_pb2.StartItem, int, str]] = {}
    # Rows as recorded, for the metrics counted once the transaction commits.
    fresh: list[asyncpg.Record] = []
    reclaimed: list[asyncpg.Record] = []
    ended: list[asyncpg.Record] = []
    for item, action, detail in decisions:
        row = rows.get(item.task_id)
        if action == "run" and row is not None and item.task_id not in runs:
            check_transition(row["status"], RUNNING)
            runs[item.task_id] = (item, row["status"], detail)
    started = await _start_attempts(conn, worker_id, list(runs.values()))
    for item, action, detail in decisions:
        row = rows.get(item.task_id)
        new = started.pop(item.task_id, None)
        if action == "run" and row is not None and new is not None:
            if row["status"] == RUNNING:
                superseded.append(RunningRef(row["worker_id"], item.task_id, row["fence"]))
            (fresh if row["status"] == QUEUED else reclaimed).append(new)
            changes.append(change_for(new, row["status"]))
            results.append(
                worker_pb2.StartResult(task_id=item.task_id, decision=RUN, task=row_to_task(new), fence=new["fence"])
            )
        elif action == "run":
            results.append(_skip(item.task_id, "duplicate entry"))
        elif action in ("fail", "cancel") and row is not None:
            target = FAILED if action == "fail" else CANCELLED
            check_transition(row["status"], target)
            new = await conn.fetchrow(
                "UPDATE tasks SET status = $2::smallint, dead_lettered = $3, error = $4, finished_at = now() "
                f"WHERE id = $1 RETURNING {TASK_COLUMNS}",
                item.task_id,
                target,
                target == FAILED,
                detail,
            )
            assert new is not None
            ended.append(new)
            history.append(history_for(new, row["status"], detail))
            changes.append(change_for(new, row["status"]))
            results.append(_skip(item.task_id, detail))
        elif action == "resume" and row is not None:
            # Announce the attempt again: the crash that lost our reply may also have lost its event.
            changes.append(change_for(row, row["status"]))
            results.append(
                worker_pb2.StartResult(task_id=item.task_id, decision=RUN, task=row_to_task(row), fence=row["fence"])
            )
        elif action == "hold" and item.task_id in held:
            changes.append(change_for(held.pop(item.task_id), QUEUED))
            results.append(_skip(item.task_id, f"held: {gates.HELD_REASONS[holds[item.task_id].reason]}"))
        elif action == "hold":
            results.append(_skip(item.task_id, "duplicate entry"))
        elif action == "defer":
            results.append(worker_pb2.StartResult(task_id=item.task_id, decision=DEFER, reason=detail))
        else:
            results.append(_skip(item.task_id, detail))
    await insert_history(conn, history)
    task_metrics.started(fresh)
    task_metrics.started(reclaimed, reclaimed=True)
    # The attempt that ran was the silent holder's; this takeover only records its end.
    task_metrics.ended(ended, ran=False)
    return StartOutcome(results, changes, superseded), checked


def _fresh(
    rows: Mapping[str, asyncpg.Record], decisions: Sequence[tuple[worker_pb2.StartItem, str, str]]
) -> list[asyncpg.Record]:
    """Fresh starts only: a takeover continues an attempt that started before (it holds its key's place)."""
    fresh = {i.task_id: rows[i.task_id] for i, a, _ in decisions if a == "run" and rows[i.task_id]["status"] == QUEUED}
    return list(fresh.values())


def _key_counts(rows: Iterable[asyncpg.Record]) -> dict[tuple[object, str], int]:
    """The running tasks of each key, as counted in the first statement."""
    return {(r["owner_id"], r["concurrency_key"]): r["key_running"] for r in rows if r["concurrency_key"] is not None}


# Every new attempt of a checked batch, each with its own fence, and its history row, in one statement.
_START_ATTEMPTS = f"""
WITH t AS (SELECT * FROM unnest($2::uuid[], $3::text[], $4::smallint[], $5::text[]) AS u(id, entry_id, before, detail)),
started AS (
    UPDATE tasks SET {START_SET} FROM t WHERE tasks.id = t.id
    RETURNING {QUALIFIED_TASK_COLUMNS}, t.before, t.detail
),
recorded AS ({history_of("started", "before", "detail")})
SELECT * FROM started
"""


async def _start_attempts(
    conn: asyncpg.Connection, worker_id: str, runs: Sequence[tuple[worker_pb2.StartItem, int, str]]
) -> dict[str, asyncpg.Record]:
    """Record the new attempts of (item, status before, history detail), with their history."""
    if not runs:
        return {}
    rows = await conn.fetch(
        _START_ATTEMPTS,
        worker_id,
        [item.task_id for item, _, _ in runs],
        [item.entry_id for item, _, _ in runs],
        [before for _, before, _ in runs],
        [detail for _, _, detail in runs],
    )
    return {str(r["id"]): r for r in rows}


def _kinds_named(items: Iterable[worker_pb2.StartItem]) -> Counter[str]:
    """How many entries name each kind (in their stream reference); a malformed reference names none."""
    kinds: Counter[str] = Counter()
    for item in items:
        with contextlib.suppress(ValueError):
            kinds[parse_ref(item.entry_id)[0]] += 1
    return kinds


def _decide(
    row: asyncpg.Record | None, item: worker_pb2.StartItem, worker_id: str, released: Collection[str]
) -> tuple[str, str]:
    if row is None:
        return "skip", "task not found"
    status = row["status"]
    if str(row["dispatch_id"]) != item.dispatch_id:
        return "skip", "stale dispatch"
    if status == QUEUED:
        return "run", "started"
    if status == SCHEDULED:
        # Never published until due (when it is QUEUED): an entry for it is not this task's to start.
        return "skip", "not due"
    if status in TERMINAL:
        return "skip", "already finished"
    # RUNNING or CANCELLING: somebody started this dispatch already.
    if row["worker_id"] == worker_id:
        if item.entry_id and item.entry_id == row["entry_id"]:
            # The worker asks again for the attempt it was given (our reply was lost): same attempt, same fence.
            return "resume", "start reply repeated"
        return "skip", "duplicate entry"
    if not item.entry_id or item.entry_id != row["entry_id"]:
        return "skip", "duplicate entry"
    previous = row["worker_id"] or "a worker"
    if item.task_id not in released:
        # The holder still heartbeats and lists the task (or we cannot tell): whoever claimed its entry waits and
        # asks again.
        return "defer", f"{previous} still holds the task"
    if status == CANCELLING:
        return "cancel", f"{previous} stopped while cancelling"
    if row["attempt"] >= row["max_attempts"]:
        return "fail", f"{previous} stopped responding; no attempts left"
    return "run", f"reclaimed from {previous}"
