"""What the database and the watchers say after a chaos run: lost tasks, end states, duplicate and
concurrent runs, and each watcher's view of each task.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import asyncpg

from services.core.task_model import (
    CANCELLED,
    FAILED,
    RUNNING,
    SUCCEEDED,
    TERMINAL,
    TIMED_OUT,
    status_name,
)
from tests.chaos.load import LoadRecord
from tests.chaos.watchers import WatchLog

# Clock slack between a kill (the test's clock) and a transaction's start (PostgreSQL's now()) on one machine.
KILL_MARGIN_S = 2.0


@dataclass(frozen=True)
class Transition:
    version: int
    from_status: int | None
    to_status: int
    attempt: int
    worker_id: str
    detail: str
    at: float  # epoch seconds of the transaction that made it


@dataclass
class TaskAudit:
    """Findings over every submitted task; each list names the tasks and what is wrong with them."""

    tasks: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)
    not_one_terminal_state: list[str] = field(default_factory=list)
    duplicate_runs: list[str] = field(default_factory=list)
    concurrent_runs: list[str] = field(default_factory=list)
    unexpected_outcomes: list[str] = field(default_factory=list)
    # Tasks whose worker was killed while running them: they may take over, retry, or use up their attempts.
    touched_by_killed_worker: int = 0
    takeovers: int = 0


async def load_history(
    pool: asyncpg.Pool, task_ids: list[str]
) -> tuple[dict[str, asyncpg.Record], dict[str, list[Transition]]]:
    rows = await pool.fetch(
        "SELECT id, owner_id, kind, status, attempt, max_attempts, version, dead_lettered, error "
        "FROM tasks WHERE id = ANY($1::uuid[])",
        task_ids,
    )
    history: dict[str, list[Transition]] = defaultdict(list)
    for entry in await pool.fetch(
        "SELECT task_id, version, from_status, to_status, attempt, worker_id, detail, at FROM task_history "
        "WHERE task_id = ANY($1::uuid[]) ORDER BY task_id, version",
        task_ids,
    ):
        history[str(entry["task_id"])].append(
            Transition(
                entry["version"],
                entry["from_status"],
                entry["to_status"],
                entry["attempt"],
                entry["worker_id"],
                entry["detail"],
                entry["at"].timestamp(),
            )
        )
    return {str(r["id"]): r for r in rows}, history


def _describe(history: list[Transition]) -> str:
    return "; ".join(
        f"v{t.version} {status_name(t.from_status) if t.from_status else '-'}->{status_name(t.to_status)}"
        f" a{t.attempt} {t.worker_id or '-'} {t.detail[:60]!r}"
        for t in history
    )


def audit_tasks(
    record: LoadRecord,
    rows: dict[str, asyncpg.Record],
    history: dict[str, list[Transition]],
    killed_workers: dict[str, float],
) -> TaskAudit:
    found = TaskAudit(tasks=len(record.submitted))
    for task_id, batch in record.submitted.items():
        row = rows.get(task_id)
        steps = history.get(task_id, [])
        if row is None or row["status"] not in TERMINAL:
            state = "missing" if row is None else status_name(row["status"])
            found.lost.append(f"{task_id} ({batch.kind}) is {state}: {_describe(steps)}")
            continue
        status = row["status"]
        found.outcomes[status_name(status)] += 1
        terminal_steps = [t for t in steps if t.to_status in TERMINAL]
        if len(terminal_steps) != 1 or steps[-1].to_status != status or steps[-1].version != row["version"]:
            found.not_one_terminal_state.append(f"{task_id}: {_describe(steps)}")

        starts = [t for t in steps if t.to_status == RUNNING]
        touched = _killed_while_running(steps, killed_workers)
        found.touched_by_killed_worker += touched
        for start in starts:
            if start.from_status == RUNNING:
                found.takeovers += 1
                previous = start.detail.removeprefix("reclaimed from ")
                if previous not in killed_workers:
                    found.concurrent_runs.append(f"{task_id} taken from live {previous}: {_describe(steps)}")
        if not touched:
            per_attempt = Counter(t.attempt for t in starts)
            repeated = any(n > 1 for n in per_attempt.values())
            extra_attempts = batch.kind != "fail" and max(per_attempt, default=1) > 1
            if repeated or extra_attempts:
                found.duplicate_runs.append(f"{task_id} ({batch.kind}): {_describe(steps)}")

        expected = _expected(batch.kind, task_id in record.cancel_requested, touched)
        if status not in expected:
            found.unexpected_outcomes.append(
                f"{task_id} ({batch.kind}) ended {status_name(status)} {row['error'][:80]!r}: {_describe(steps)}"
            )
    return found


def _killed_while_running(steps: list[Transition], killed_workers: dict[str, float]) -> bool:
    """Whether some attempt's worker was killed while it ran that attempt (its start up to the next change)."""
    for index, step in enumerate(steps):
        killed_at = killed_workers.get(step.worker_id) if step.to_status == RUNNING else None
        if killed_at is None:
            continue
        ended_at = steps[index + 1].at if index + 1 < len(steps) else float("inf")
        if step.at - KILL_MARGIN_S <= killed_at <= ended_at + KILL_MARGIN_S:
            return True
    return False


def _expected(kind: str, cancel_requested: bool, touched_by_killed_worker: bool) -> set[int]:
    """End states a task may reach: what its kind does, a cancel, or (after a crash) its attempts used up."""
    allowed = {"sleep": {SUCCEEDED}, "fail": {FAILED}, "spin": {TIMED_OUT}}[kind]
    if cancel_requested:
        allowed = allowed | {CANCELLED}
    if touched_by_killed_worker:
        allowed = allowed | {FAILED}
    return allowed


# A change committed this close to a PostgreSQL restart may never have had its event published: the server went
# away between the commit and its reply, so the caller saw an error and published nothing (docs/chaos-report.md).
OUTAGE_MARGIN_S = 3.0


@dataclass
class WatchAudit:
    watchers: int = 0
    snapshots: int = 0
    events: int = 0
    reconnects: int = 0
    missed_transitions: list[str] = field(default_factory=list)
    final_state_unknown: list[str] = field(default_factory=list)
    # The same, for changes committed while PostgreSQL was restarting: known issue, their events can be lost.
    missed_in_store_outage: list[str] = field(default_factory=list)
    final_unknown_in_store_outage: list[str] = field(default_factory=list)
    # Events older than one already received. Each change is published after its commit by the process that
    # made it, so a gateway's and a scheduler's events for one task can cross; the version lets clients drop
    # the older one. Counted, not a failure.
    stale_arrivals: int = 0
    foreign_tasks: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def watcher_gaps(
    log: WatchLog, task_id: str, history: list[Transition], final_version: int
) -> tuple[list[Transition], int, bool]:
    """(missed transitions, stale event arrivals, final version known) for one task.

    A transition is seen if an event carried its version, or covered if a snapshot jumped over it.
    An event older than another event already received is stale; an exact repeat (after a reconnect
    or a snapshot's replay) is neither.
    """
    known = 0
    covered: list[tuple[int, int]] = []
    events: set[int] = set()
    newest_event = 0
    stale = 0
    for seen in log.by_task.get(task_id, []):
        if seen.source == "snapshot":
            if seen.version > known:
                covered.append((known, seen.version))
            known = max(known, seen.version)
            continue
        if seen.version in events:
            continue
        stale += seen.version < newest_event
        events.add(seen.version)
        newest_event = max(newest_event, seen.version)
        known = max(known, seen.version)
    missed = [
        t for t in history if t.version not in events and not any(low < t.version <= high for low, high in covered)
    ]
    return missed, stale, known == final_version


def _during(at: float, outages: list[tuple[float, float]]) -> bool:
    return any(start - OUTAGE_MARGIN_S <= at <= end + OUTAGE_MARGIN_S for start, end in outages)


async def audit_watchers(
    pool: asyncpg.Pool,
    logs: list[WatchLog],
    record: LoadRecord,
    rows: dict[str, asyncpg.Record],
    history: dict[str, list[Transition]],
    store_outages: list[tuple[float, float]],
) -> WatchAudit:
    found = WatchAudit(watchers=len(logs))
    seen_ids = {task_id for log in logs for task_id in log.by_task}
    owners = {
        str(r["id"]): str(r["owner_id"])
        for r in await pool.fetch("SELECT id, owner_id FROM tasks WHERE id = ANY($1::uuid[])", list(seen_ids))
    }
    for index, log in enumerate(logs):
        found.snapshots += log.snapshots
        found.events += log.events
        found.reconnects += log.reconnects
        if log.failure:
            found.failures.append(f"watcher {index}: {log.failure}")
        for task_id in log.by_task:
            if owners.get(task_id, log.owner_id) != log.owner_id:
                found.foreign_tasks.append(f"watcher {index} of {log.owner_id} saw {task_id} of {owners[task_id]}")
        for task_id, owner in record.owner.items():
            if owner != log.owner_id or task_id not in rows:
                continue
            steps = history.get(task_id, [])
            missed, stale, final = watcher_gaps(log, task_id, steps, rows[task_id]["version"])
            found.stale_arrivals += stale
            for step in missed:
                where = found.missed_in_store_outage if _during(step.at, store_outages) else found.missed_transitions
                where.append(f"watcher {index}: {task_id} v{step.version} -> {status_name(step.to_status)}")
            if not final:
                last_change_in_outage = bool(steps) and _during(steps[-1].at, store_outages)
                where = found.final_unknown_in_store_outage if last_change_in_outage else found.final_state_unknown
                where.append(
                    f"watcher {index}: {task_id} knows v{log.known_version(task_id)} of v{rows[task_id]['version']}"
                )
    return found
