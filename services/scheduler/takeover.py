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

# A first sighting no start asked about again for this many confirmation windows is forgotten (its reclaimer let
# the entry go, or gave it back to the holder): the map never outgrows the takeovers of the last minutes.
FORGET_AFTER_WINDOWS = 20


class ConfirmedReleases:
    """A HolderCheck that passes on the releases of `check` seen for at least `confirm_s` (monotonic seconds)."""

    def __init__(self, check: HolderCheck, confirm_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._check = check
        self._confirm_s = confirm_s
        self._clock = clock
        # (holder, task id, attempt start) -> when its release was first seen.
        self._first_seen: dict[tuple[str, str, float], float] = {}

    async def __call__(self, held: Mapping[str, Collection[tuple[str, float]]]) -> set[str]:
        released = await self._check(held)
        if self._confirm_s <= 0:
            return released
        now = self._clock()
        confirmed: set[str] = set()
        for holder, tasks in held.items():
            for task_id, started_at in tasks:
                key = (holder, task_id, started_at)
                if task_id not in released:
                    self._first_seen.pop(key, None)  # alive after all: the next sighting starts the wait again
                    continue
                first = self._first_seen.setdefault(key, now)
                if now - first >= self._confirm_s:
                    confirmed.add(task_id)
                    del self._first_seen[key]
        horizon = now - FORGET_AFTER_WINDOWS * self._confirm_s
        for key in [k for k, seen in self._first_seen.items() if seen < horizon]:
            del self._first_seen[key]
        return confirmed
