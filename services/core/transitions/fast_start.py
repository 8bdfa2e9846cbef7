"""The common start in one autocommit statement: queued tasks whose current dispatch the entries carry, with
their kinds' controls and their concurrency keys checked in the same statement.

One statement, so one round trip and one commit, also for tasks with a concurrency key or of a rate-limited kind
when nothing binds. What the statement cannot start at once (its kind paused, its key full, its rate tokens short
or taken for a limit since changed) it leaves untouched, and the caller decides it on the checked path
(start.py, gates.py), which holds what must wait: a hold locks its owner's row, and a statement holding a key's
lock must not wait for an owner's row (an end takes them in the other order, migration 0016), so the one
statement never holds anything.

Why each control holds here as on the checked path:
- pause: rt_kind_gates takes each kind's lock shared (held until the statement commits) and reads the controls
  afresh, as it always did here (migration 0016);
- concurrency keys: rt_key_room (migration 0019) takes the keys' start locks, in order, then counts their running
  tasks in a statement of its own (a fresh snapshot: every start of the key that committed before the lock was
  granted is counted), after every row and the kinds' locks are taken (its arguments come from the locked rows
  and the kinds' controls). The start lock is striped: a key far from its limit is counted under one stripe,
  with room kept for the starts the other stripes may make meanwhile (so such starts do not wait for each
  other); otherwise under every stripe, exactly. A task starts only if its place among this statement's tasks of
  its key, highest priority then oldest, plus the key's running tasks (and that room) stays within its limit; the
  locks are held until the statement commits. It takes no end lock: ends never wait for it, nor it for them (an
  end only lowers the count; a start that counted an ending task as running starts fewer, and leaves the rest
  to the checked path, which counts again);
- rate limits: tokens taken before the statement (RedisLimiter.take_ahead, for the limit the scheduler last read
  of the kind) count only for the limit the statement reads under the kind's lock; a task of a limited kind
  starts only within the tokens taken for that very limit, and the tokens of the tasks that did not start are
  given back at once (the caller's checked path takes its own).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import asyncpg

from resilienttask.worker.v1 import worker_pb2
from services.core.rate_limits import RateLimit, TakenAhead
from services.core.task_model import QUALIFIED_TASK_COLUMNS, QUEUED, RUNNING
from services.core.transitions import gates
from services.core.transitions.rules import history_of

# What starting an attempt writes ($1 the worker, t.entry_id the entry that started it); both paths use it.
START_SET = (
    f"status = {RUNNING}, attempt = attempt + 1, fence = nextval('fence_seq'), worker_id = $1, "
    "entry_id = t.entry_id, started_at = now(), progress = 0, error = ''"
)

# Rows are locked in id order first, so concurrent batches cannot deadlock; then the kinds' locks (rt_kind_gates,
# which also makes a pause wait for this start); then the keys' start locks (rt_key_room: `keyed` reads the kinds'
# controls, so the keys are always locked after the kinds, the order of the checked path). A window function
# cannot sit beside FOR UPDATE, so the places (within each key, then within each kind's tokens) come after.
# $5..$8: the rate tokens taken ahead, by kind: the limit they were taken for (starts, period) and how many.
FAST_START = f"""
WITH t AS (SELECT * FROM unnest($2::uuid[], $3::uuid[], $4::text[]) AS u(id, dispatch_id, entry_id)),
locked AS (
    SELECT tasks.id, tasks.kind, tasks.owner_id, tasks.concurrency_key, tasks.concurrency_limit, tasks.priority,
        tasks.created_at
    FROM tasks JOIN t ON tasks.id = t.id
    WHERE tasks.status = {QUEUED} AND tasks.dispatch_id = t.dispatch_id ORDER BY tasks.id FOR UPDATE OF tasks
),
gated AS (SELECT * FROM rt_kind_gates((SELECT array_agg(DISTINCT kind) FROM locked))),
keyed AS (
    SELECT array_agg(owner_id) AS owners, array_agg(concurrency_key) AS keys, array_agg(1) AS wanted,
        array_agg(concurrency_limit) AS limits
    FROM locked
    WHERE concurrency_key IS NOT NULL AND kind NOT IN (SELECT kind FROM gated WHERE paused_at IS NOT NULL)
),
counted AS (
    SELECT r.* FROM keyed
    CROSS JOIN LATERAL rt_key_room(keyed.owners, keyed.keys, keyed.wanted, keyed.limits, true, false) AS r
    WHERE keyed.owners IS NOT NULL
),
key_fits AS (
    SELECT l.id, l.kind, l.priority, l.created_at, g.rate_starts, g.rate_period_ms FROM (
        SELECT locked.*, row_number() OVER (
            PARTITION BY owner_id, concurrency_key ORDER BY priority DESC, created_at, id) AS place
        FROM locked
    ) AS l
    LEFT JOIN gated AS g ON g.kind = l.kind
    LEFT JOIN counted AS c ON c.owner_id = l.owner_id AND c.concurrency_key = l.concurrency_key
    WHERE g.paused_at IS NULL
    AND (l.concurrency_key IS NULL OR coalesce(c.running, 0) + l.place <= l.concurrency_limit)
),
fits AS (
    SELECT f.id, f.rate_starts, f.rate_period_ms FROM (
        SELECT key_fits.*, row_number() OVER (PARTITION BY kind ORDER BY priority DESC, created_at, id) AS place
        FROM key_fits
    ) AS f
    LEFT JOIN unnest($5::text[], $6::integer[], $7::bigint[], $8::integer[]) AS a(kind, starts, period_ms, granted)
        ON a.kind = f.kind AND a.starts = f.rate_starts AND a.period_ms = f.rate_period_ms
    WHERE f.rate_starts IS NULL OR f.place <= a.granted
),
started AS (
    UPDATE tasks SET {START_SET}
    FROM t, fits WHERE tasks.id = t.id AND tasks.id = fits.id
    RETURNING {QUALIFIED_TASK_COLUMNS}, fits.rate_starts AS {gates.GATED}_rate_starts,
        fits.rate_period_ms AS {gates.GATED}_rate_period_ms
),
recorded AS ({history_of("started", str(QUEUED), "'started'")})
SELECT * FROM started
"""


async def start_fast(
    pool: asyncpg.Pool,
    worker_id: str,
    items: Sequence[worker_pb2.StartItem],
    limiter: gates.Limiter | None,
    kinds_named: Mapping[str, int],
) -> list[asyncpg.Record]:
    """Start what fits of these entries (one per task) in one statement; returns the rows started.

    kinds_named: how many entries name each kind, the rate tokens to take ahead (for the kinds the limiter last
    read as limited)."""
    ahead = await limiter.take_ahead(kinds_named) if limiter is not None else {}
    tokens = [(kind, t) for kind, t in ahead.items() if t.taken.granted > 0]
    # A failure of the statement keeps the tokens until the window passes: stricter, never looser.
    rows = await pool.fetch(
        FAST_START,
        worker_id,
        [i.task_id for i in items],
        [i.dispatch_id for i in items],
        [i.entry_id for i in items],
        [kind for kind, _ in tokens],
        [t.limit.starts for _, t in tokens],
        [t.limit.period_ms for _, t in tokens],
        [t.taken.granted for _, t in tokens],
    )
    if limiter is not None:
        limiter.remember(_limits_read(rows))
        await _give_back_unused(limiter, ahead, rows)
    return rows


def _limits_read(rows: Sequence[asyncpg.Record]) -> dict[str, RateLimit | None]:
    """The rate limits the statement read of the started tasks' kinds (None: the kind has none)."""
    return {
        r["kind"]: None
        if r[f"{gates.GATED}_rate_starts"] is None
        else RateLimit(r[f"{gates.GATED}_rate_starts"], r[f"{gates.GATED}_rate_period_ms"])
        for r in rows
    }


async def _give_back_unused(
    limiter: gates.Limiter, ahead: Mapping[str, TakenAhead], rows: Sequence[asyncpg.Record]
) -> None:
    """Give back the tokens taken ahead that no started task used: a task of a limited kind used one (the
    statement started it only for the limit they were taken for)."""
    used = Counter(r["kind"] for r in rows if r[f"{gates.GATED}_rate_starts"] is not None)
    unused = [(kind, t.taken.members(t.taken.granted - used[kind])) for kind, t in ahead.items()]
    if any(members for _, members in unused):
        await limiter.give_back(unused)
