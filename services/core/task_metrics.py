"""Task counters and durations, recorded where each transition commits (never before: a rolled-back change
counts nothing). Each function takes the rows a statement returned and does nothing when metrics are off.

Labels are the task's kind and outcome only: never a task, user or worker id.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import datetime

import asyncpg

from services.core.metrics import current
from services.core.task_model import CANCELLED, FAILED, QUEUED, SUCCEEDED, TIMED_OUT

OUTCOMES = {SUCCEEDED: "succeeded", FAILED: "failed", CANCELLED: "cancelled", TIMED_OUT: "timed_out"}


def _seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None:
        return None
    finish = end.timestamp() if end is not None else time.time()
    return max(0.0, finish - start.timestamp())


def submitted(rows: Iterable[asyncpg.Record]) -> None:
    """New tasks inserted (a repeated request_id returns existing rows: the caller passes only new ones)."""
    if (m := current()) is None:
        return
    for row in rows:
        m.submitted.labels(row["kind"]).inc()


def started(rows: Iterable[asyncpg.Record], *, reclaimed: bool = False) -> None:
    """New attempts recorded RUNNING; `reclaimed` when they were taken from a worker that went silent.

    Queue wait is observed for first attempts only (submit → start): later attempts wait out a retry backoff
    or a reclaim threshold, which says nothing about how busy the workers are.
    """
    if (m := current()) is None:
        return
    for row in rows:
        kind = row["kind"]
        m.started.labels(kind).inc()
        if reclaimed:
            m.reclaimed.labels(kind).inc()
        elif row["attempt"] == 1:
            wait = _seconds_between(row["created_at"], row["started_at"])
            if wait is not None:
                m.queue_wait.labels(kind).observe(wait)


def ended(rows: Iterable[asyncpg.Record], *, ran: bool = True) -> None:
    """Attempts that ended, as recorded: a terminal state (counted as finished, dead letters too), or QUEUED
    again (a retry). `ran` is False for tasks that never ran this attempt (cancelled while queued): they count
    as finished without a run duration."""
    if (m := current()) is None:
        return
    for row in rows:
        kind, status = row["kind"], row["status"]
        if status == QUEUED:
            m.retries.labels(kind).inc()
            outcome = "failed"
        else:
            outcome = OUTCOMES.get(status, "")
            if not outcome:
                continue
            m.finished.labels(kind, outcome).inc()
            if row["dead_lettered"]:
                m.dead_lettered.labels(kind).inc()
        if ran:
            run = _seconds_between(row["started_at"], row["finished_at"])
            if run is not None:
                m.run.labels(kind, outcome).observe(run)


def fenced(kinds: Iterable[str]) -> None:
    """Worker reports refused as superseded (a stale fence, or a worker that does not hold the task)."""
    if (m := current()) is None:
        return
    for kind in kinds:
        m.fenced.labels(kind).inc()
