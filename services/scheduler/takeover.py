"""Takeovers believed only on a second look: a holder's release counts once it was seen twice, some time apart.

The record a takeover is decided on (services.core.worker_registry: the holders' last heartbeats and reports) lives
in Redis, and a failover that loses acknowledged writes (a replica promoted before it received them, as when it
was cut off from its primary) rolls it back: a live holder's last heartbeat suddenly looks as old as the writes
lost, while the entries it holds look as idle, so another worker reclaims one and asks to start its task. Believed
at once, that start would run the task on two workers until the old holder heard it was superseded. The holder's
next heartbeat, recorded within a heartbeat interval, brings the record back; a release still seen after
`confirm_s` is real (a dead or cut-off holder stays silent), and costs a legitimate takeover that much delay.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping

from services.core.transitions.start import HolderCheck

# A sighting not followed by another within this long is stale: the holder may have been seen alive by nobody in
# between (its reclaimer gave the entry up, or asks another scheduler), so the next sighting starts the wait again
# rather than confirm on an old first look; and the map never outgrows the takeovers of the last minutes. A
# reclaimer asks again about a deferred entry every second (services.worker.worker.DEFER_RETRY_S), well within.
STALE_AFTER_WINDOWS = 3
STALE_AFTER_MIN_S = 5.0


class ConfirmedReleases:
    """A HolderCheck that passes on the releases of `check` seen for at least `confirm_s` (monotonic seconds)."""

    def __init__(self, check: HolderCheck, confirm_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._check = check
        self._confirm_s = confirm_s
        self._stale_s = max(STALE_AFTER_WINDOWS * confirm_s, STALE_AFTER_MIN_S)
        self._clock = clock
        # (holder, task id, attempt start) -> when its release was first and last seen.
        self._seen: dict[tuple[str, str, float], tuple[float, float]] = {}

    async def __call__(self, held: Mapping[str, Collection[tuple[str, float]]]) -> set[str]:
        asked = self._clock()  # before the read: a slow read must not count as time the holder stayed silent
        released = await self._check(held)
        if self._confirm_s <= 0:
            return released
        answered = self._clock()
        confirmed: set[str] = set()
        for holder, tasks in held.items():
            for task_id, started_at in tasks:
                key = (holder, task_id, started_at)
                if task_id not in released:
                    self._seen.pop(key, None)  # alive after all: the next sighting starts the wait again
                    continue
                first, last = self._seen.get(key, (answered, answered))
                if asked - last > self._stale_s:
                    first = answered
                if asked - first >= self._confirm_s:
                    confirmed.add(task_id)
                    self._seen.pop(key, None)
                else:
                    self._seen[key] = (first, answered)
        for key in [k for k, (_, last) in self._seen.items() if answered - last > self._stale_s]:
            del self._seen[key]
        return confirmed
