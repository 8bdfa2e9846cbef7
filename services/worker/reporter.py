"""Outcomes go to the scheduler in micro-batches; entries are acknowledged only once an outcome is persisted."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from redis.exceptions import RedisError

from resilienttask.worker.v1 import worker_pb2
from services.worker.connection import Backoff, SchedulerLink, WorkRefused
from services.worker.consumer import DispatchConsumer
from services.worker.messages import HeldKey

log = logging.getLogger(__name__)

MAX_BATCH = 500
# An acknowledgement that keeps failing may be dropped: the entry is reclaimed later and the scheduler,
# seeing the task finished, answers SKIP, so it is acknowledged then.
ACK_ATTEMPTS = 5


@dataclass(frozen=True)
class Finished:
    """One attempt's outcome waiting to be persisted, with the stream entry to acknowledge after."""

    key: HeldKey
    entry_id: str
    item: worker_pb2.FinishItem


class FinishReporter:
    """Queue of outcomes; whatever accumulates while one batch is being recorded goes in the next."""

    def __init__(
        self,
        link: SchedulerLink,
        consumer: DispatchConsumer,
        on_settled: Callable[[Finished], None],
    ) -> None:
        self.link = link
        self.consumer = consumer
        self.on_settled = on_settled
        self._queue: list[Finished] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def submit(self, finished: Finished) -> None:
        self._queue.append(finished)
        self._idle.clear()
        self._wake.set()

    async def wait_idle(self) -> None:
        """Until every submitted outcome is settled."""
        await self._idle.wait()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                results = await self._deliver(batch)
                await self._acknowledge(batch, results)
                for finished in batch:
                    self.on_settled(finished)
            self._idle.set()

    async def _deliver(self, batch: list[Finished]) -> list[worker_pb2.FinishResult | None]:
        """Report until the scheduler answers; None for an item the scheduler refuses for good."""
        backoff = Backoff(initial_s=0.1, maximum_s=5.0)
        while True:
            try:
                return list(await self.link.finish_tasks([f.item for f in batch]))
            except WorkRefused as exc:
                if exc.permanent:
                    return await self._deliver_one_by_one(batch, exc)
                log.warning("outcomes not recorded; retrying", extra={"error": str(exc), "items": len(batch)})
            except Exception as exc:
                log.warning("outcomes not delivered; retrying", extra={"error": repr(exc), "items": len(batch)})
            if self.link.connected.is_set():
                await asyncio.sleep(backoff.next_delay_s())
            else:  # no point asking before the stream is back, and no reason to wait longer
                await self.link.connected.wait()

    async def _deliver_one_by_one(
        self, batch: list[Finished], exc: WorkRefused
    ) -> list[worker_pb2.FinishResult | None]:
        """Isolate the item the scheduler refuses, so it cannot hold back the others."""
        if len(batch) == 1:
            # Not acknowledged: the entry is reclaimed later and the scheduler decides about the task then.
            log.error(
                "outcome refused by the scheduler; left to reclaim",
                extra={"task_id": batch[0].key[0], "error": str(exc)},
            )
            return [None]
        results: list[worker_pb2.FinishResult | None] = []
        for finished in batch:
            results.extend(await self._deliver([finished]))
        return results

    async def _acknowledge(self, batch: list[Finished], results: list[worker_pb2.FinishResult | None]) -> None:
        # A superseded attempt's entry now belongs to the worker running the new attempt: acknowledging
        # it would drop that worker's pending entry, so only the others are acknowledged.
        entry_ids = [
            finished.entry_id
            for finished, result in zip(batch, results, strict=True)
            if result is not None and result.verdict != worker_pb2.FINISH_VERDICT_SUPERSEDED
        ]
        backoff = Backoff(initial_s=0.05, maximum_s=1.0)
        for _ in range(ACK_ATTEMPTS):
            try:
                await self.consumer.ack(entry_ids)
                return
            except (RedisError, OSError) as exc:
                log.warning("acknowledgement failed; retrying", extra={"error": repr(exc)})
                await asyncio.sleep(backoff.next_delay_s())
        log.error("acknowledgements dropped; the entries will be reclaimed and skipped", extra={"n": len(entry_ids)})
