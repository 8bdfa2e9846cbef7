"""Task counters and durations, recorded where each transition commits (never before: a rolled-back change
counts nothing). Each function takes the rows a statement returned and does nothing when metrics are off.

Labels are the task's kind and outcome only: never a task, user or worker id. Counters move once per kind and
batch (a statement's rows are mostly of one kind), and so are durations (Metrics.observe_all).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from datetime import datetime

import asyncpg

from services.core.metrics import current
from services.core.task_model import CANCELLED, FAILED, QUEUED, SUCCEEDED, TIMED_OUT

OUTCOMES = {SUCCEEDED: "succeeded", FAILED: "failed", CANCELLED: "cancelled", TIMED_OUT: "timed_out"}


def _seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None:
        return None
    seconds = (end - start).total_seconds() if end is not None else time.time() - start.timestamp()
    return max(0.0, seconds)


def submitted(rows: Iterable[asyncpg.Record]) -> None:
    """New tasks inserted (a repeated request_id returns existing rows: the caller passes only new ones)."""
    if (m := current()) is None:
        return
    for kind, n in Counter(row["kind"] for row in rows).items():
        m.child(m.submitted, kind).inc(n)


def started(rows: Iterable[asyncpg.Record], *, reclaimed: bool = False) -> None:
    """New attempts recorded RUNNING; `reclaimed` when they were taken from a worker that went silent.

    Queue wait is observed for first attempts only (submit → start, or due → start for a delayed task): later
    attempts wait out a retry backoff or a reclaim threshold, which says nothing about how busy the workers are.
    """
    if (m := current()) is None:
        return
    kinds: Counter[str] = Counter()
    waits: dict[str, list[float]] = {}
    for row in rows:
        kind = row["kind"]
        kinds[kind] += 1
        if not reclaimed and row["attempt"] == 1:
            # A delayed task waits for workers from its run_at, not from its submission.
            wait = _seconds_between(row.get("run_at") or row["created_at"], row["started_at"])
            if wait is not None:
                waits.setdefault(kind, []).append(wait)
    for kind, values in waits.items():
        m.observe_all(m.child(m.queue_wait, kind), values)
    for kind, n in kinds.items():
        m.child(m.started, kind).inc(n)
        if reclaimed:
            m.child(m.reclaimed, kind).inc(n)


def ended(rows: Iterable[asyncpg.Record], *, ran: bool = True) -> None:
    """Attempts that ended, as recorded: a terminal state (counted as finished, dead letters too), or QUEUED
    again (a retry). `ran` is False for tasks that never ran this attempt (cancelled while queued): they count
    as finished without a run duration."""
    if (m := current()) is None:
        return
    finished: Counter[tuple[str, str]] = Counter()
    retried: Counter[str] = Counter()
    dead: Counter[str] = Counter()
    runs: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        kind, status = row["kind"], row["status"]
        if status == QUEUED:
            retried[kind] += 1
            outcome = "failed"
        else:
            outcome = OUTCOMES.get(status, "")
            if not outcome:
                continue
            finished[kind, outcome] += 1
            if row["dead_lettered"]:
                dead[kind] += 1
        if ran:
            run = _seconds_between(row["started_at"], row["finished_at"])
            if run is not None:
                runs.setdefault((kind, outcome), []).append(run)
    for (kind, outcome), values in runs.items():
        m.observe_all(m.child(m.run, kind, outcome), values)
    for (kind, outcome), n in finished.items():
        m.child(m.finished, kind, outcome).inc(n)
    for kind, n in retried.items():
        m.child(m.retries, kind).inc(n)
    for kind, n in dead.items():
        m.child(m.dead_lettered, kind).inc(n)


def fenced(kinds: Iterable[str]) -> None:
    """Worker reports refused as superseded (a stale fence, or a worker that does not hold the task)."""
    if (m := current()) is None:
        return
    for kind, n in Counter(kinds).items():
        m.child(m.fenced, kind).inc(n)
