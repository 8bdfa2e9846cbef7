"""Progress reports are frequent: keep the latest per attempt and write them in one statement per tick.

An attempt is (task, fence, reporting worker): the statement records a value only while that worker holds
the task with that fence, so one worker's reports never move another's task.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

import asyncpg

from services.core import outbox
from services.core.transitions.sweeps import record_progress

log = logging.getLogger(__name__)


class ProgressBuffer:
    def __init__(self) -> None:
        self._latest: dict[tuple[str, int, str], float] = {}

    def add(self, task_id: str, fence: int, worker_id: str, progress: float) -> None:
        self._latest[(task_id, fence, worker_id)] = progress

    def discard(self, worker_id: str, task_ids: Iterable[str]) -> None:
        """Drop the worker's own buffered reports for these tasks (another worker's outcome, even a forged one
        naming them, must not erase a holder's progress)."""
        gone = set(task_ids)
        for key in [k for k in self._latest if k[0] in gone and k[2] == worker_id]:
            del self._latest[key]

    def take(self) -> dict[tuple[str, int, str], float]:
        latest, self._latest = self._latest, {}
        return latest

    async def flush_forever(self, pool: asyncpg.Pool, emitter: outbox.EventEmitter, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            reports = self.take()
            if not reports:
                continue
            try:
                changes = await record_progress(pool, reports)
            except Exception as exc:  # progress is droppable; the flusher must outlive any store trouble
                log.warning("progress not recorded", extra={"error": repr(exc)})
                continue
            emitter.submit(changes)
