"""The worker: takes entries from the dispatch stream, asks the scheduler to start them, runs handlers,
heartbeats what it holds and reports outcomes. It never touches PostgreSQL.

Slots: a slot is taken by a running handler, and by an entry waiting for the scheduler's decision
(in a work request, or parked after DEFER or a failed request). Entries read but not yet decided stay
in this consumer's pending list, so nothing is lost when the worker dies: XAUTOCLAIM hands them on.

Self-fencing: another worker may reclaim an entry once it has sat idle for reclaim_idle_ms. Held entries
are refreshed while a scheduler answers, and for outage_grace_ms after the last answer (a scheduler
restarting must not cost every running attempt). A worker that can no longer prove it owns an entry (cut
off from the scheduler past the grace, or unable to reset the entry's idle time in Redis) stops its handler
without a report, before the entry can be reclaimed elsewhere. The timing rule, with R = reclaim_idle_ms,
M = self_fence_margin_ms, G = cancel_grace_ms and t0 the last reset of the entry's idle time as this worker
counts it (when the read, claim or refresh was asked: Redis reset it at that moment or later):

    cancelled at t0 + R - M, killed by t0 + R - M + G, reclaimable elsewhere from t0 + R at the earliest,

and WorkerConfig refuses M < G + FENCE_SLACK_MS, so the handler has stopped FENCE_SLACK_MS (for timer lag and the
kill itself) before anyone may take the task over. A reset answered after the fence deadline does not count
(our XCLAIM may have landed after a reclaim). So no task runs on two workers at once, even when a link stalls;
the only exception is an in-process handler that ignores cancellation (it cannot be killed, only abandoned:
register such code with process=True). A worker out of contact with the scheduler takes no new entries,
gives back those it read, and cancels cannot reach it meanwhile.

A start whose answer was lost (contact lost after the request was sent: a scheduler that died after committing it,
or a path that stalled) may have been recorded: its tasks may be RUNNING here, attempt and fence issued. Handing
those entries back would let another worker take the tasks over as new attempts, spending one each (the last one
failing the task unrun). So they are kept, refreshed like held entries, and asked about again as soon as a
scheduler answers: a recorded start is resumed (same attempt, same fence), any other is decided afresh. Only if no
scheduler answers within the outage grace (or the worker drains) are they handed back. Entries read while contact
was already lost were never asked about, and are handed back at once.

Draining (an operator's DrainWorker pushed by the scheduler, or SIGTERM): the worker takes no new entry and lets
the entries it holds but has not started go, lets its handlers finish until the drain deadline, then stops the
rest and reports them handed back (queued again at once, the attempt not counted). After an operator's drain the
worker stays connected and idle until it is stopped; on SIGTERM it then leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from resilienttask.handlers import get_handler, registered_kinds
from resilienttask.v1 import task_pb2
from resilienttask.worker.v1 import worker_pb2
from services.core.cancellation import cancel_and_wait
from services.core.dispatch import ensure_dispatch_groups
from services.core.logging import task_scope
from services.core.worker_credentials import EnrolmentConfig
from services.worker import tracing as task_traces
from services.worker.config import WorkerConfig
from services.worker.connection import AnswerLost, Backoff, SchedulerLink, WorkerTokens, WorkRefused
from services.worker.consumer import Delivery, DispatchConsumer
from services.worker.logs import LogShipper
from services.worker.messages import HeldKey, finish_item, held, spec_from_task
from services.worker.progress import ProgressThrottle
from services.worker.reporter import Finished, FinishReporter
from services.worker.runner import Attempt, AttemptOutcome
from services.worker.worker_metrics import WorkerMetrics

if TYPE_CHECKING:
    from services.worker.tracing import HandlerSpan

log = logging.getLogger(__name__)

# A deferred entry (its task is busy elsewhere or here) is asked about again after this long.
DEFER_RETRY_S = 1.0
# Stop reason of handlers killed because the worker exits: nothing is reported, the entry is reclaimed.
SHUTDOWN = "shutdown"
# Another attempt holds the lease: nothing is reported, and the entry now belongs to that attempt.
SUPERSEDED = "superseded"
# The entry may be reclaimed elsewhere before we can refresh it: nothing is reported, the entry is reclaimed.
SELF_FENCED = "self-fenced"
UNREPORTED = (SHUTDOWN, SUPERSEDED, SELF_FENCED)
# The worker's health service that turns SERVING once a drain is over (nothing runs; rtask-worker-drain waits on it).
DRAINED_SERVICE = "resilienttask.worker.drained"
# The drain deadline passed: the handler is stopped and the task reported handed back.
HANDBACK = "handback"
HANDED_BACK = "handed back: the worker drained before the task finished"
# The outcome of a resumed start whose task was cancelled while its answer was lost.
NOT_STARTED = "cancelled before its handler started"
STOP_REASONS = {worker_pb2.STOP_REASON_SUPERSEDED: SUPERSEDED, worker_pb2.STOP_REASON_CANCELLED: "cancelled"}


@dataclass
class Running:
    """A handler this worker runs for one attempt."""

    key: HeldKey
    entry_id: str
    attempt: Attempt
    task: asyncio.Task[None] | None = None
    stop_reason: str = ""
    # The handler run's span (tracing on, a sampled submission) and the traceparent its outcome carries up.
    span: HandlerSpan | None = None
    trace_parent: str = ""


@dataclass(order=True)
class Parked:
    """An entry waiting to be offered to the scheduler again."""

    due: float
    delivery: Delivery = field(compare=False)


class Worker:
    """One consumer-group member; `start()` launches its loops, `stop()` drains and leaves."""

    def __init__(self, config: WorkerConfig, redis: aioredis.Redis, enrolment: EnrolmentConfig) -> None:
        self.config = config
        self.redis = redis
        config.isolation.identity()  # an unknown handler user fails the start, not the first task
        self.consumer = DispatchConsumer(redis, config.worker_id, registered_kinds())
        hello = worker_pb2.WorkerHello(worker_id=config.worker_id, slots=config.slots, kinds=registered_kinds())
        self.link = SchedulerLink(
            config.scheduler_addrs,
            WorkerTokens(enrolment, config.worker_id),
            hello,
            self._on_command,
            self._announce,
            on_drain=self.drain,
            contact_timeout_s=config.contact_timeout_ms / 1000,
        )
        self.progress = ProgressThrottle(self.link.send, lambda key: key in self.running)
        self.logs = LogShipper(self.link.send, config.logs)
        self.link.logs = self.logs
        self.reporter = FinishReporter(self.link, self.consumer, self._settled)
        self.running: dict[HeldKey, Running] = {}
        # Outcomes sent but not yet confirmed: still heartbeated and refreshed, so nobody reclaims them.
        self.finishing: dict[HeldKey, str] = {}
        self.parked: list[Parked] = []
        # Entries whose start request went unanswered (the scheduler may have started them here), by entry id: kept
        # and refreshed, asked about again once a scheduler answers (not before _ask_again_at), or handed back.
        self.unanswered: dict[str, Delivery] = {}
        self._ask_again_at = 0.0
        self._unanswered_changed = asyncio.Event()
        # Entries in a start request now: one coming back from a reclaim pass meanwhile is not offered twice.
        self.offering: set[str] = set()
        # entry id -> when its idle time in the stream was last reset (read, claimed or refreshed), monotonic.
        self.refreshed_at: dict[str, float] = {}
        self._fence_changed = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._parked_changed = asyncio.Event()
        self._start_backoff = Backoff(initial_s=0.1, maximum_s=5.0)
        self._stopping = False
        # Entries beyond the free slots were handed back: reclaim (them, or others') at the next free slot.
        self._handed_back = False
        # Monotonic time at which a draining worker hands back what still runs; None while not draining.
        self.drain_deadline: float | None = None
        self._drain_changed = asyncio.Event()
        # Set once a drain is over: nothing runs, and what was handed back is reported (or given up with the link).
        self.drained = asyncio.Event()
        self._draining: asyncio.Task[None] | None = None
        # Set by services.worker.worker_metrics when metrics are on.
        self.metrics: WorkerMetrics | None = None
        self._loops: list[asyncio.Task[None]] = []
        self._consuming: asyncio.Task[None] | None = None
        self._refreshing: asyncio.Task[None] | None = None

    # -- state ------------------------------------------------------------------------------------
    @property
    def free_slots(self) -> int:
        return self.config.slots - len(self.running) - len(self.offering) - len(self.parked) - len(self.unanswered)

    @property
    def connected(self) -> bool:
        return self.link.connected.is_set()

    @property
    def ready(self) -> bool:
        """Connected to a scheduler, and every loop alive (a crashed loop makes the worker useless).

        A drained worker stays ready: it is idle on purpose, and restarting it would put it back to work."""
        loops: list[asyncio.Task[None] | None] = [*self._loops]
        if self.drain_deadline is None:  # a draining worker's consumer ended on purpose
            loops.append(self._consuming)
        return self.connected and bool(loops) and all(loop is not None and not loop.done() for loop in loops)

    @property
    def draining(self) -> bool:
        return self.drain_deadline is not None

    def drain_remaining_s(self) -> float:
        """While draining: how long until what still runs is handed back."""
        return 0.0 if self.drain_deadline is None else max(0.0, self.drain_deadline - time.monotonic())

    def _held(self) -> list[tuple[HeldKey, str]]:
        return [(r.key, r.entry_id) for r in self.running.values()] + list(self.finishing.items())

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        with contextlib.suppress(RedisError, OSError):  # retried by the consumer loop on NOGROUP
            await ensure_dispatch_groups(self.redis, self.consumer.kinds)
        self._consuming = asyncio.create_task(self._consume(), name="consume")
        self._loops = [
            asyncio.create_task(coro, name=name)
            for name, coro in (
                ("connect", self.link.run()),
                ("heartbeat", self._heartbeat_forever()),
                ("progress", self.progress.run()),
                ("logs", self.logs.run()),
                ("finish", self.reporter.run()),
                ("parked", self._retry_parked()),
                ("ask-again", self._ask_again_forever()),
                ("self-fence", self._fence_forever()),
            )
        ]
        for task in [self._consuming, *self._loops]:
            task.add_done_callback(_log_crash)
        log.info("worker started", extra={"worker": self.config.worker_id, "slots": self.config.slots})

    async def stop(self, drain_grace_s: float | None = None) -> None:
        """Drain (up to the drain grace, or an operator's earlier deadline), then leave.

        What the drain hands back is queued again at once. Anything still unreported after that (a start granted
        as the drain ended, or a scheduler that cannot be reached) is killed without a report: its entry is not
        acknowledged, and another worker reclaims it after the idle threshold.
        """
        grace_s = self.config.drain_grace_s if drain_grace_s is None else drain_grace_s
        self._stopping = True
        self.drain(grace_s)
        if self._draining is not None:
            await asyncio.wait({self._draining})
        for left in list(self.running.values()):
            left.stop_reason = SHUTDOWN
            left.attempt.cancel(grace_s=0)
        still = [r.task for r in self.running.values() if r.task is not None]
        if still:
            await asyncio.wait(still)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.reporter.wait_idle(), timeout=max(1.0, self.config.contact_timeout_ms / 1000))
        await cancel_and_wait([*self._loops, *([self._refreshing] if self._refreshing else [])])
        await self.link.close()
        log.info("worker stopped", extra={"worker": self.config.worker_id, "unsettled": len(self.finishing)})

    def drain(self, grace_s: float) -> None:
        """Take no new entry from now on; hand back what still runs after grace_s (an earlier deadline stays)."""
        deadline = time.monotonic() + max(0.0, grace_s)
        if self.drain_deadline is not None and self.drain_deadline <= deadline:
            return
        first = self.drain_deadline is None
        self.drain_deadline = deadline
        self._drain_changed.set()
        if first:
            log.info(
                "draining", extra={"worker": self.config.worker_id, "running": len(self.running), "grace_s": grace_s}
            )
            self._slot_freed.set()  # the consumer wakes and ends
            self._draining = asyncio.create_task(self._drain(), name="drain")
            self._draining.add_done_callback(_log_crash)

    async def _drain(self) -> None:
        """Let go of the entries not started, wait for the handlers until the deadline, hand back the rest."""
        if self._consuming is not None:
            await asyncio.wait({self._consuming})  # ends after the current blocking read (read_block_ms)
        # On a cluster, what the blocking reads still out brought: handed back at once, not left to the idle time.
        left_over = [d.entry_id for d in await self.consumer.close()]
        if left_over:
            with contextlib.suppress(RedisError, OSError):
                await self.consumer.release(left_over, self.config.reclaim_idle_ms)
        # The unanswered too: a draining worker's starts are all deferred, so asking again cannot resume them.
        parked, self.parked = [p.delivery for p in self.parked] + self._take_unanswered(), []
        if parked:
            await self._release(parked)
        while self.running or self.offering:  # a start asked before the drain may still be granted
            assert self.drain_deadline is not None
            wait_s = self.drain_deadline - time.monotonic()
            if wait_s <= 0:
                break
            self._drain_changed.clear()
            changed = asyncio.ensure_future(self._drain_changed.wait())
            handlers = {r.task for r in self.running.values() if r.task is not None}
            await asyncio.wait({changed, *handlers}, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
            changed.cancel()
        self._hand_back(list(self.running.values()))
        stopping = [r.task for r in self.running.values() if r.task is not None]
        if stopping:
            await asyncio.wait(stopping)
        with contextlib.suppress(TimeoutError):  # the handbacks reported, unless no scheduler answers
            await asyncio.wait_for(self.reporter.wait_idle(), timeout=self.config.contact_timeout_ms / 1000)
        self.drained.set()
        log.info("drained", extra={"worker": self.config.worker_id})

    def _hand_back(self, attempts: Iterable[Running]) -> None:
        """Stop these handlers (cooperatively, killed after the cancel grace); they are reported handed back."""
        for running in attempts:
            if running.stop_reason == "":
                running.stop_reason = HANDBACK
            running.attempt.cancel()

    # -- consuming --------------------------------------------------------------------------------
    async def _consume(self) -> None:
        """Read new entries while slots are free and the scheduler answers; every reclaim interval, first
        take over stalled ones."""
        next_reclaim = time.monotonic()
        backoff = Backoff(initial_s=0.1, maximum_s=2.0)
        while not self._stopping and self.drain_deadline is None:
            free = self.free_slots
            if free <= 0:
                self._slot_freed.clear()
                await self._while_full()
                continue
            if not self.link.connected.is_set():
                # An entry taken now could not be started, only held hostage until it is reclaimed.
                await self._until_connected_or_stopping()
                continue
            try:
                # Redis resets a delivered entry's idle time somewhere between the request and the reply (a
                # blocked read, or a reply held up on a stalled path, may take long): counted from the request,
                # the fence deadline can only come early, never late.
                now = asked_at = time.monotonic()
                if now >= next_reclaim or self._handed_back:
                    self._handed_back = False
                    next_reclaim = now + self.config.reclaim_check_interval_ms / 1000
                    deliveries = await self.consumer.reclaim(free, self.config.reclaim_idle_ms)
                else:
                    block_ms = min(self.config.read_block_ms, max(1, int((next_reclaim - now) * 1000)))
                    deliveries = await self.consumer.read(free, block_ms)
                backoff.reset()
                deliveries = await self._within_slots(deliveries, free)
            except Exception as exc:
                if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
                    with contextlib.suppress(RedisError, OSError):
                        await ensure_dispatch_groups(self.redis, self.consumer.kinds)
                    continue
                log.warning("could not read the dispatch stream", extra={"error": repr(exc)})
                await asyncio.sleep(backoff.next_delay_s())
                continue
            if deliveries:
                for delivery in deliveries:
                    self.refreshed_at.setdefault(delivery.entry_id, asked_at)
                task_traces.queue_waits(deliveries)
                await self._offer(deliveries)

    async def _while_full(self) -> None:
        """Wait for a free slot. On a cluster the blocking reads of a kind's shards stay out between reads: one that
        brings entries while every slot is taken hands them back at once, rather than holding them unseen (and
        out of every other worker's reach) until the reclaim idle time."""
        reads = self.consumer.waiting_reads()
        slot = asyncio.ensure_future(self._slot_freed.wait())
        try:
            await asyncio.wait([slot, *reads], return_when=asyncio.FIRST_COMPLETED)
        finally:
            slot.cancel()
        if self.free_slots <= 0 and any(read.done() for read in reads):
            try:
                await self._within_slots(await self.consumer.collect(), 0)
            except (RedisError, OSError) as exc:  # the read failed: nothing was taken
                log.warning("could not read the dispatch stream", extra={"error": repr(exc)})

    async def _within_slots(self, deliveries: list[Delivery], free: int) -> list[Delivery]:
        """The first `free` deliveries (the consumer orders them most urgent first); the rest are handed back at
        once, for the next reclaim pass of any worker (this one's comes as soon as it has a slot free). A read of
        several streams (kinds, or a kind's shards) may bring more than asked, and a slot is a handler: never more
        run than the worker has."""
        if len(deliveries) <= free:
            return deliveries
        kept, surplus = deliveries[:free], deliveries[free:]
        try:
            await self.consumer.release([d.entry_id for d in surplus], self.config.reclaim_idle_ms)
            self._handed_back = True
        except (RedisError, OSError) as exc:  # reclaimed after the idle time instead
            log.warning("could not hand back entries beyond the free slots", extra={"error": repr(exc)})
        return kept

    async def _until_connected_or_stopping(self) -> None:
        connected = asyncio.ensure_future(self.link.connected.wait())
        stopping = asyncio.ensure_future(self._slot_freed.wait())  # set by stop()
        await asyncio.wait({connected, stopping}, return_when=asyncio.FIRST_COMPLETED)
        for waiter in (connected, stopping):
            waiter.cancel()
        self._slot_freed.clear()

    async def _offer(self, deliveries: Sequence[Delivery], *, asked_before: bool = False) -> None:
        """Ask the scheduler, in one call, which of these entries to run; `asked_before`: entries whose earlier
        start request went unanswered (they stay unanswered until a scheduler answers for them)."""
        # Our own entries can come back from XAUTOCLAIM when they sat idle (a Redis hiccup stopped the
        # refresh, or a long deferral): we already run them, or will ask about them again anyway.
        mine = {r.entry_id for r in self.running.values()} | set(self.finishing.values()) | self.offering
        mine.update(p.delivery.entry_id for p in self.parked)
        mine.update(self.unanswered)
        fresh = [d for d in deliveries if d.entry_id not in mine]
        if not fresh:
            return
        started_at = time.monotonic()
        items = [
            worker_pb2.StartItem(
                task_id=d.entry.task_id,
                dispatch_id=d.entry.dispatch_id,
                entry_id=d.entry_id,
                trace_parent=task_traces.sampled_parent(d),
            )
            for d in fresh
        ]
        self.offering.update(d.entry_id for d in fresh)
        try:
            results = await self.link.start_tasks(items)
            stale = [
                d.entry_id
                for d, r in zip(fresh, results, strict=True)
                if r.decision == worker_pb2.START_DECISION_RUN
                and self.refreshed_at.get(d.entry_id, 0.0) < started_at - self.config.heartbeat_interval_ms / 1000
            ]
            if stale:  # parked a while: reset their idle time before their handlers start, or they would be fenced
                await self._refresh(stale, granted=True)
        except Exception as exc:  # whatever failed, the entries stay ours and are offered again
            if (asked_before or isinstance(exc, (AnswerLost, WorkRefused))) and self.drain_deadline is None:
                # The request (this one or an earlier) reached the scheduler and no decision came back: it may have
                # started these tasks here (a refusal answers the whole request, of which the starts may have
                # committed). Asked again as soon as a scheduler answers, so a recorded start is resumed.
                self._keep_unanswered(fresh, exc)
                return
            if not self.link.connected.is_set():  # read while out of contact, never asked about: let others have them
                await self._release(fresh)
                return
            if self.drain_deadline is not None:  # draining: asking again is for another worker to do
                await self._release(fresh)
                return
            delay_s = self._start_backoff.next_delay_s()
            log.warning("start refused; entries kept", extra={"error": repr(exc), "retry_s": delay_s})
            self._park(fresh, delay_s)
            return
        finally:
            self.offering.difference_update(d.entry_id for d in fresh)
            self._drain_changed.set()
        self._start_backoff.reset()
        skipped: list[str] = []
        deferred: list[Delivery] = []
        for delivery, result in zip(fresh, results, strict=True):
            if result.decision == worker_pb2.START_DECISION_RUN:
                self._launch(delivery, result)
            elif result.decision == worker_pb2.START_DECISION_SKIP:
                skipped.append(delivery.entry_id)
            else:
                deferred.append(delivery)
        if deferred and self.drain_deadline is not None:
            await self._release(deferred)  # the scheduler starts nothing more here: let another worker have them
        elif deferred:
            self._park(deferred, DEFER_RETRY_S)
        if skipped:
            self._forget(skipped)
            try:
                await self.consumer.ack(skipped)
            except (RedisError, OSError) as exc:  # reclaimed and skipped again later
                log.warning("could not acknowledge skipped entries", extra={"error": repr(exc)})
        self._slot_freed.set()

    async def _release(self, deliveries: Sequence[Delivery]) -> None:
        """Give entries we cannot start (no scheduler answers us) to whichever worker reclaims next."""
        entry_ids = [d.entry_id for d in deliveries]
        self._forget(entry_ids)
        # Their slots are free: a consumer waiting for one (every slot was taken by them) reads again.
        self._slot_freed.set()
        try:
            await self.consumer.release(entry_ids, self.config.reclaim_idle_ms)
            log.warning("no scheduler in contact; entries released", extra={"entries": len(entry_ids)})
        except (RedisError, OSError) as exc:  # they are reclaimed after the idle time instead
            log.warning("could not release entries", extra={"error": repr(exc)})

    def _park(self, deliveries: Sequence[Delivery], delay_s: float) -> None:
        due = time.monotonic() + delay_s
        self.parked.extend(Parked(due, d) for d in deliveries)
        self.parked.sort()
        self._parked_changed.set()

    async def _retry_parked(self) -> None:
        """Offer parked entries again when due, if they are still ours (another worker may have reclaimed them)."""
        while True:
            self._parked_changed.clear()
            if not self.parked:
                await self._parked_changed.wait()
                continue
            wait_s = self.parked[0].due - time.monotonic()
            if wait_s > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._parked_changed.wait(), timeout=wait_s)
                continue
            now = time.monotonic()
            due = [p.delivery for p in self.parked if p.due <= now]
            try:
                owned = await self.consumer.owned([d.entry_id for d in due])
            except (RedisError, OSError) as exc:
                log.warning("dispatch stream unavailable", extra={"error": repr(exc)})
                await asyncio.sleep(self._start_backoff.next_delay_s())
                continue
            self.parked = [p for p in self.parked if p.due > now]
            self._forget(d.entry_id for d in due if d.entry_id not in owned)
            self._slot_freed.set()
            if self._stopping:
                continue
            if keep := [d for d in due if d.entry_id in owned]:
                if self.link.connected.is_set() and self.drain_deadline is None:
                    await self._offer(keep)
                else:
                    await self._release(keep)

    # -- starts whose answer was lost ---------------------------------------------------------------
    def _keep_unanswered(self, deliveries: Sequence[Delivery], exc: Exception) -> None:
        """Keep entries whose start the scheduler may have recorded, to ask about them again: as soon as contact is
        back when it was lost, after a backoff when a scheduler still answers (it refused, or timed out)."""
        in_contact = self.link.connected.is_set()
        delay_s = self._start_backoff.next_delay_s() if in_contact else 0.0
        self.unanswered.update((d.entry_id, d) for d in deliveries)
        self._ask_again_at = time.monotonic() + delay_s
        self._unanswered_changed.set()
        log.warning(
            "start unanswered; entries kept to ask again",
            extra={"error": repr(exc), "entries": len(deliveries), "in_contact": in_contact, "retry_s": delay_s},
        )

    def _take_unanswered(self) -> list[Delivery]:
        taken, self.unanswered = list(self.unanswered.values()), {}
        return taken

    def _asked_to_refresh(self) -> list[str]:
        """The entries asked about and not yet decided (in a start request now, or unanswered) whose refresh still
        counts: kept ours while the scheduler decides, however long its answer takes (a call that times out leaves
        them unanswered, to be asked about again, not past their fence deadline). One past its fence deadline may
        have been reclaimed by another worker, and a refresh (an XCLAIM) would take it back from it."""
        now = time.monotonic()
        fence_after_s = self._fence_after_s
        return [e for e in (*self.offering, *self.unanswered) if now < self.refreshed_at.get(e, 0.0) + fence_after_s]

    def _let_go_unrefreshed(self) -> None:
        """Forget the unanswered entries past their fence deadline (Redis did not take their refresh in time): they may
        be reclaimed elsewhere any moment, so resuming one here could overlap a takeover, as a handler would (the rule
        in the module's docstring). Neither asked about nor handed back (a release would take one back from a worker
        that reclaimed it): the next reclaim pass takes them, and the scheduler decides as for any reclaimed entry
        (resumed if it is ours again, a takeover once our release is confirmed)."""
        now = time.monotonic()
        expired = [e for e in self.unanswered if now >= self.refreshed_at.get(e, 0.0) + self._fence_after_s]
        if not expired:
            return
        for entry_id in expired:
            del self.unanswered[entry_id]
        self._forget(expired)
        self._slot_freed.set()
        log.warning("unanswered entries unrefreshed in time; left to reclaim", extra={"entries": len(expired)})

    async def _ask_again_forever(self) -> None:
        """Ask the scheduler again about the unanswered entries as soon as one answers; hand them back when none
        does within the outage grace (their tasks are then taken over elsewhere, as a cut-off worker's are)."""
        while True:
            self._unanswered_changed.clear()
            self._let_go_unrefreshed()
            if not self.unanswered:
                await self._unanswered_changed.wait()
                continue
            if not self._may_refresh() or self.drain_deadline is not None:
                await self._release(self._take_unanswered())
                continue
            if not self.link.connected.is_set():
                out_s = self.link.out_of_contact_s() or 0.0
                await _first_set(
                    (self.link.connected, self._unanswered_changed), self.config.outage_grace_ms / 1000 - out_s
                )
                continue
            wait_s = self._ask_again_at - time.monotonic()
            if wait_s > 0:
                await _first_set((self._unanswered_changed,), wait_s)
                continue
            asked = list(self.unanswered)
            try:
                owned = await self.consumer.owned(asked)
            except (RedisError, OSError) as exc:
                log.warning("dispatch stream unavailable", extra={"error": repr(exc)})
                self._ask_again_at = time.monotonic() + self._start_backoff.next_delay_s()
                continue
            # Reclaimed by another worker meanwhile: the scheduler decides its start.
            lost = [e for e in asked if e not in owned and self.unanswered.pop(e, None) is not None]
            if lost:
                self._forget(lost)
                self._slot_freed.set()
            again = [self.unanswered.pop(e) for e in asked if e in owned and e in self.unanswered]
            if again:
                await self._offer(again, asked_before=True)

    # -- running handlers -------------------------------------------------------------------------
    def _launch(self, delivery: Delivery, result: worker_pb2.StartResult) -> None:
        key: HeldKey = (result.task_id or result.task.id, result.fence)
        spec = spec_from_task(result.task)
        handler = get_handler(spec.kind)
        if result.task.status == task_pb2.TASK_STATUS_CANCELLING:
            # A start resumed after its answer was lost, the task cancelled meanwhile (the cancel found no stream
            # to us): its handler never ran here, and need not start only to be stopped.
            outcome = AttemptOutcome(worker_pb2.OUTCOME_CANCELLED, NOT_STARTED)
            self._report(key, delivery.entry_id, outcome, spec.kind, task_traces.sampled_parent(delivery))
            return
        if handler is None:
            outcome = AttemptOutcome(
                worker_pb2.OUTCOME_FAILED, f"no handler for kind {spec.kind!r} on worker {self.config.worker_id}"
            )
            self._report(key, delivery.entry_id, outcome, spec.kind, task_traces.sampled_parent(delivery))
            return
        attempt = Attempt(
            handler,
            spec,
            on_progress=lambda fraction: self.progress.report(key, fraction),
            cancel_grace_s=self.config.cancel_grace_ms / 1000,
            isolation=self.config.isolation,
            log=self.logs.open(key),
            log_rate=(self.config.logs.task_lines_per_s, self.config.logs.task_burst_lines),
        )
        running = Running(key, delivery.entry_id, attempt)
        span = task_traces.handler_span(delivery, result)
        if span is not None:
            running.span, running.trace_parent = span, task_traces.sampled_parent(delivery)
        self.running[key] = running
        running.task = asyncio.create_task(self._run(running), name=f"attempt:{key[0]}")
        self._fence_changed.set()
        if self.drain_deadline is not None and time.monotonic() >= self.drain_deadline:
            self._hand_back([running])  # granted just as the drain ended

    async def _run(self, running: Running) -> None:
        began = time.monotonic()
        kind = running.attempt.spec.kind
        with task_scope(running.key[0]):
            try:
                with task_traces.handler_run(running.span, lambda: running.stop_reason):
                    outcome = await running.attempt.run()
            except Exception as exc:  # a bug in the runner must not lose the task: report it as a failed attempt
                log.exception("attempt crashed", extra={"task_id": running.key[0]})
                outcome = AttemptOutcome(worker_pb2.OUTCOME_FAILED, f"worker error: {exc!r}")
            finally:
                del self.running[running.key]
                self.logs.close(running.key)
                self._slot_freed.set()
            if self.metrics is not None:
                self.metrics.handled(kind, outcome.outcome, time.monotonic() - began)
            if running.stop_reason == HANDBACK and outcome.outcome in (
                worker_pb2.OUTCOME_CANCELLED,
                worker_pb2.OUTCOME_FAILED,
            ):  # stopped for the drain (a handler may raise when stopped): the task goes back to the queue
                outcome = AttemptOutcome(worker_pb2.OUTCOME_HANDED_BACK, f"{HANDED_BACK}; {outcome.error}")
            if running.stop_reason in UNREPORTED:
                # Superseded: another attempt owns the task and its entry. Otherwise the entry is reclaimed.
                log.info("attempt dropped", extra={"task_id": running.key[0], "reason": running.stop_reason})
                self._forget([running.entry_id])
                return
            self._report(running.key, running.entry_id, outcome, kind, running.trace_parent)

    def _report(self, key: HeldKey, entry_id: str, outcome: AttemptOutcome, kind: str, trace_parent: str) -> None:
        """Hand the outcome to the reporter; trace_parent (the submission's, when traced) is its finish span's."""
        if self.metrics is not None:
            self.metrics.reported(kind, outcome.outcome)
        self.finishing[key] = entry_id
        item = finish_item(key, outcome)
        item.trace_parent = trace_parent
        self.reporter.submit(Finished(key, entry_id, item))

    def _settled(self, finished: Finished) -> None:
        self.finishing.pop(finished.key, None)
        self._forget([finished.entry_id])

    def _forget(self, entry_ids: Iterable[str]) -> None:
        for entry_id in entry_ids:
            self.refreshed_at.pop(entry_id, None)

    def _on_command(self, command: worker_pb2.CancelCommand) -> None:
        """A cancel pushed by the scheduler; commands for attempts we do not run are stale and ignored."""
        running = self.running.get((command.task.task_id, command.task.fence))
        if running is None:
            return
        if running.stop_reason != SUPERSEDED:
            running.stop_reason = STOP_REASONS.get(command.reason, "cancelled")
        log.info("stopping attempt", extra={"task_id": running.key[0], "reason": running.stop_reason})
        running.attempt.cancel()

    # -- heartbeats and self-fencing ------------------------------------------------------------
    async def _heartbeat_forever(self) -> None:
        interval_s = self.config.heartbeat_interval_ms / 1000
        while True:
            await asyncio.sleep(interval_s)
            await self._heartbeat()

    async def _announce(self) -> None:
        """Right after (re)connecting: tell the new scheduler what we hold, without waiting for the tick."""
        await self.link.heartbeat([held(key) for key, _ in self._held()], self._drain_state())

    def _drain_state(self) -> float | None:
        """For the heartbeat: seconds until the drain hands back what runs; None while not draining."""
        return self.drain_remaining_s() if self.drain_deadline is not None else None

    async def _heartbeat(self) -> None:
        """Tell the scheduler what we hold and, while it answers (or within the outage grace), reset those
        entries' idle time.

        The refresh runs beside the beats (one at a time): a slow Redis must not delay the next beat, or the
        scheduler's answers would stop and the stream be given up for nothing.
        """
        holding = self._held()
        await self.link.heartbeat([held(key) for key, _ in holding], self._drain_state())
        if not self._may_refresh() or (self._refreshing is not None and not self._refreshing.done()):
            return
        entry_ids = [entry_id for _, entry_id in holding] + self._asked_to_refresh()
        self._refreshing = asyncio.create_task(self._refresh(entry_ids), name="refresh")

    def _may_refresh(self) -> bool:
        """In contact with a scheduler, or out of contact for less than the outage grace.

        Every worker loses contact while a scheduler restarts: refreshing through the outage keeps their
        entries from looking abandoned, so no running handler is stopped and no finished outcome is re-run.
        A worker cut off for longer stops refreshing: its handlers are then stopped (self-fencing) before
        another worker may reclaim their entries, which it does once they are idle for reclaim_idle_ms.
        """
        if self.link.connected.is_set():
            return True
        out_s = self.link.out_of_contact_s()
        return out_s is not None and out_s * 1000 < self.config.outage_grace_ms

    async def _refresh(self, entry_ids: Sequence[str], *, granted: bool = False) -> None:
        """Reset the idle time of entries we hold; each counts as reset when it was asked (never later).

        A reset answered after the entry's fence deadline does not count (unless `granted`): the entry may have
        been reclaimed by another worker by the time our XCLAIM reached Redis, and taken back by it, so its
        handler is stopped all the same. `granted`: the scheduler has just given us these entries' tasks, so they
        are ours whatever their idle time was.
        """
        if not entry_ids:
            return
        asked_at = time.monotonic()
        try:
            # Bounded, so a stalled Redis cannot stall the heartbeats with it; as long as the silence that ends
            # a stream, so a merely slow one (a loaded machine) is waited for.
            await asyncio.wait_for(self.consumer.refresh(entry_ids), timeout=self.config.contact_timeout_ms / 1000)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("could not refresh held entries", extra={"error": repr(exc)})
            return
        answered_at = time.monotonic()
        for entry_id in entry_ids:
            reset = self.refreshed_at.get(entry_id)
            if reset is not None and (granted or answered_at < reset + self._fence_after_s):
                self.refreshed_at[entry_id] = asked_at
        self._fence_changed.set()

    @property
    def _fence_after_s(self) -> float:
        return (self.config.reclaim_idle_ms - self.config.self_fence_margin_ms) / 1000

    def _fence_deadline(self, running: Running) -> float:
        """When this attempt must stop: its entry may be reclaimed elsewhere reclaim_idle_ms after its last reset."""
        reset = self.refreshed_at.get(running.entry_id, 0.0)
        return reset + self._fence_after_s

    async def _fence_forever(self) -> None:
        """Stop, without a report, every handler whose entry is about to become reclaimable: cancelled at its
        fence deadline, killed after the cancel grace, which the margin exceeds (the rule in the module's
        docstring)."""
        while True:
            self._fence_changed.clear()
            now = time.monotonic()
            live = [r for r in self.running.values() if r.stop_reason not in UNREPORTED]
            for running in live:
                if self._fence_deadline(running) <= now:
                    log.warning(
                        "self-fencing: entry unrefreshed, stopping the handler before it can be reclaimed",
                        extra={"task_id": running.key[0], "connected": self.link.connected.is_set()},
                    )
                    running.stop_reason = SELF_FENCED
                    running.attempt.cancel()
            upcoming = [self._fence_deadline(r) for r in live if r.stop_reason not in UNREPORTED]
            wait_s = (min(upcoming) - now) if upcoming else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._fence_changed.wait(), timeout=wait_s)


async def _first_set(events: Sequence[asyncio.Event], timeout_s: float) -> None:
    """Until one of events is set, or timeout_s passes."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=max(0.0, timeout_s), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("worker loop crashed", extra={"loop": task.get_name()}, exc_info=task.exception())
