"""The due publisher: SCHEDULED tasks reach the dispatch streams when their run_at comes, not before.

It sleeps until the earliest run_at it knows of and is woken early by the database when a gateway stores an
earlier one (a PostgreSQL notification sent at the commit of that insert, migration 0009: it cannot arrive
before the row is visible, it costs the gateway no extra round trip, and it is one of the database's own
guarantees rather than a second system's). A Redis pub/sub nudge would cost the gateway a second round trip
after its commit, and a gateway dying between the two would leave the publishers asleep. Besides, it looks once
a second (idle_check_s: two index lookups) to let through tasks whose owners were at their active limit and have
room again, and to cover a notification lost with a broken listening connection.

When tasks are due it flips them QUEUED a batch per statement (transitions.due, safe with any number of
schedulers) and publishes each batch through the same path as a submission (outbox.emit_and_dispatch: the
change events and the dispatch entries in one pipelined round trip). A crash between the commit and the XADD
loses nothing: the rows are QUEUED and unpublished, and the publish sweep publishes them after the grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
import redis.asyncio as aioredis

from services.core import outbox
from services.core.db import listen_forever
from services.core.errors import STORE_ERRORS
from services.core.settings import setting
from services.core.transitions import due
from services.core.transitions.rules import PUBLISH_GRACE_S, SCHEDULED_CHANNEL

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DueConfig:
    # Tasks flipped and published per statement and round trip: large enough that 10,000 due at once take a few
    # round trips, small enough that one statement holds its row locks briefly.
    batch: int = setting("RTASK_DUE_BATCH", 1000, "delayed tasks made due and published per statement")
    # Also how soon a due task whose owner was at the active limit goes once the owner has room (nothing
    # notifies that), and a bound on a lost notification's cost.
    idle_check_s: float = setting(
        "RTASK_DUE_IDLE_CHECK_S", 1.0, "the longest the delayed-task publisher sleeps without a notification"
    )
    # An event loop may wake a timer up to its clock resolution early.
    wake_margin_s: float = setting(
        "RTASK_DUE_WAKE_MARGIN_S", 0.001, "added to each of the delayed-task publisher's sleeps"
    )
    # Another scheduler holds them (and publishes them); looking again at once would only spin against its statement.
    claimed_elsewhere_s: float = setting(
        "RTASK_DUE_CLAIMED_ELSEWHERE_S", 0.05, "the wait when due tasks are there but another scheduler claimed them"
    )
    notified_tolerance_s: float = setting(
        "RTASK_DUE_NOTIFIED_TOLERANCE_S",
        0.005,
        "a notified `run_at` this close to the planned look (or later) does not wake the delayed-task publisher",
    )


class DuePublisher:
    """One scheduler's due publisher; run() until cancelled."""

    def __init__(
        self, pool: asyncpg.Pool, redis: aioredis.Redis, max_active_tasks: int, config: DueConfig | None = None
    ) -> None:
        self.pool = pool
        self.redis = redis
        self.max_active_tasks = max_active_tasks
        self.config = config or DueConfig()
        self._wake = asyncio.Event()
        # Wall-clock time (s) this publisher will look next; a notification of an earlier run_at wakes it.
        self._next_look = 0.0

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:  # one failing cancels the other (see sweepers.run_sweepers)
            group.create_task(self._publish_forever())
            group.create_task(self._listen())

    async def publish_due(self) -> int:
        """Flip and publish every task due now, a batch at a time; returns how many were flipped.

        Each batch's publication (its events built and sent with its dispatch entries) overlaps the flip of the
        next, which waits on PostgreSQL meanwhile; one publication at a time is in flight, so they go out in order.
        """
        flipped = 0
        publishing: asyncio.Task[None] | None = None
        try:
            while True:
                rows = await due.flip_due(self.pool, self.config.batch, self.max_active_tasks, PUBLISH_GRACE_S)
                flipped += len(rows)
                if publishing is not None:
                    await publishing
                    publishing = None
                if rows:
                    publishing = asyncio.create_task(self._publish(rows))
                if len(rows) < self.config.batch:
                    return flipped
        finally:
            if publishing is not None:
                await publishing

    async def _publish(self, rows: Sequence[asyncpg.Record]) -> None:
        dispatchable = [row for row in rows if not row["held"]]
        await outbox.emit_and_dispatch(self.pool, self.redis, dispatchable, due.due_changes(rows))

    async def _publish_forever(self) -> None:
        while True:
            wait_s = self.config.idle_check_s
            # Until the sleep starts, any notification wakes it: the reads below may have missed that row.
            self._next_look = math.inf
            self._wake.clear()
            try:
                flipped = await self.publish_due()
                until = await due.seconds_until_due(self.pool, self.max_active_tasks)
                if until is not None and until <= 0 and not flipped:
                    wait_s = self.config.claimed_elsewhere_s
                elif until is not None:
                    wait_s = min(wait_s, max(0.0, until) + self.config.wake_margin_s)
            except STORE_ERRORS as exc:
                log.warning("due publication failed; will retry", extra={"error": repr(exc)})
            except Exception:  # the loop must outlive anything (e.g. a connection broken mid-query)
                log.exception("due publication crashed; will retry")
            await self._sleep(wait_s)

    async def _sleep(self, wait_s: float) -> None:
        self._next_look = time.time() + wait_s
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), wait_s)

    def _notified(self, payload: str) -> None:
        try:
            run_at_s = int(payload) / 1000
        except ValueError:
            run_at_s = 0.0
        # Only a time earlier than the planned look by more than the tolerance wakes it: the many submissions of a
        # burst all due at one second would otherwise each wake it for nothing.
        if run_at_s < self._next_look - self.config.notified_tolerance_s:
            self._wake.set()

    async def _listen(self) -> None:
        await listen_forever(self.pool, SCHEDULED_CHANNEL, self._notified, self._wake.set)
