"""The load of a chaos run: users, a seeded plan of mixed task batches, and a submitter that never gives up
on a batch it was asked to submit (retries reuse the batch's request_id, so a repeat creates nothing new).
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import grpc

import resilienttask
from resilienttask.errors import FailedPrecondition, ResilientTaskError
from tests.conftest import unique_email

PASSWORD = "chaos horse battery staple"
# Codes a client may see while a component is down or restarting: the call is repeated, and counted.
TRANSIENT = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
)
# A batch the service keeps refusing with transient codes for this long fails the run.
GIVE_UP_AFTER_S = 240.0


@dataclass(frozen=True)
class PlannedBatch:
    user: int
    kind: str
    workload_s: float
    max_runtime_s: float | None
    replicas: int
    max_attempts: int
    request_id: str
    # Cancel every replica this long after the submission returned (None: never).
    cancel_after_s: float | None


def plan(total: int, users: int, rng: random.Random) -> list[PlannedBatch]:
    """Mostly short sleeps, some long ones (beyond the 10 s reclaim threshold), failing tasks that use up
    their attempts, a few busy loops killed at max_runtime, and some cancels of running tasks."""
    batches: list[PlannedBatch] = []
    planned = 0
    while planned < total:
        roll = rng.random()
        max_runtime: float | None = None
        max_attempts = 3
        cancel_after: float | None = None
        if roll < 0.04:
            kind, workload, replicas = "sleep", rng.uniform(12, 16), rng.choice([1, 2])
        elif roll < 0.84:
            kind, workload, replicas = (
                "sleep",
                rng.choice([0.05, 0.2, 0.5, 1.0, 2.0, 3.0]),
                rng.choice([1, 1, 2, 3, 5, 10]),
            )
            if workload >= 1 and rng.random() < 0.12:
                cancel_after = rng.uniform(0.2, 1.5)
        elif roll < 0.97:
            kind, workload, replicas, max_attempts = "fail", rng.choice([0.05, 0.3]), rng.choice([1, 2, 3]), 2
        else:
            kind, workload, replicas, max_runtime = "spin", 600.0, 1, 1.0
        replicas = min(replicas, total - planned)
        batches.append(
            PlannedBatch(
                user=rng.randrange(users),
                kind=kind,
                workload_s=workload,
                max_runtime_s=max_runtime,
                replicas=replicas,
                max_attempts=max_attempts,
                request_id=f"chaos-{uuid.uuid4()}",
                cancel_after_s=cancel_after,
            )
        )
        planned += replicas
    return batches


@dataclass
class LoadRecord:
    """What the clients did and saw."""

    submitted: dict[str, PlannedBatch] = field(default_factory=dict)  # task id -> its batch
    owner: dict[str, str] = field(default_factory=dict)  # task id -> user id
    cancel_requested: set[str] = field(default_factory=set)
    transient_errors: Counter[str] = field(default_factory=Counter)
    # Refusals that no fault explains (anything but the transient codes): each fails the run.
    unexpected_errors: list[str] = field(default_factory=list)


async def signup_users(address: str, count: int) -> tuple[list[resilienttask.AsyncClient], list[str]]:
    """Clients logged in as `count` new users, and the users' ids."""
    clients, ids = [], []
    for _ in range(count):
        client = resilienttask.AsyncClient(address)
        session = await client.signup(unique_email("chaos"), PASSWORD)
        clients.append(client)
        ids.append(session.user.id)
    return clients, ids


async def _persist(record: LoadRecord, what: str, call: object) -> object:
    """Await call() until it answers with something other than a transient code."""
    deadline = time.monotonic() + GIVE_UP_AFTER_S
    while True:
        try:
            return await call()  # type: ignore[operator]
        except ResilientTaskError as exc:
            if exc.code not in TRANSIENT or time.monotonic() > deadline:
                raise
            record.transient_errors[f"{what} {exc.code.name}"] += 1
            await asyncio.sleep(0.3)


class Submitter:
    """Submits planned batches spread evenly over a span of time, and cancels those planned to be."""

    def __init__(self, clients: list[resilienttask.AsyncClient], user_ids: list[str], record: LoadRecord) -> None:
        self.clients = clients
        self.user_ids = user_ids
        self.record = record
        self._cancels: set[asyncio.Task[None]] = set()

    async def run(self, batches: list[PlannedBatch], span_s: float) -> None:
        started = time.monotonic()
        pending: set[asyncio.Task[None]] = set()
        for index, batch in enumerate(batches):
            due = started + span_s * index / max(1, len(batches))
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            task = asyncio.create_task(self._submit(batch))
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.gather(*list(pending))
        await asyncio.gather(*list(self._cancels))

    async def _submit(self, batch: PlannedBatch) -> None:
        client = self.clients[batch.user]

        async def submit() -> list[resilienttask.Task]:
            return await client.submit(
                f"chaos {batch.kind} {batch.workload_s:g}s",
                kind=batch.kind,
                workload=batch.workload_s,
                max_runtime=batch.max_runtime_s,
                replicas=batch.replicas,
                max_attempts=batch.max_attempts,
                request_id=batch.request_id,
            )

        try:
            tasks: list[resilienttask.Task] = await _persist(self.record, "SubmitTask", submit)  # type: ignore[assignment]
        except ResilientTaskError as exc:
            self.record.unexpected_errors.append(f"SubmitTask {batch.request_id}: {exc}")
            return
        if len(tasks) != batch.replicas:
            self.record.unexpected_errors.append(f"SubmitTask {batch.request_id}: {len(tasks)} tasks returned")
        for task in tasks:
            self.record.submitted[task.id] = batch
            self.record.owner[task.id] = self.user_ids[batch.user]
        if batch.cancel_after_s is not None:
            cancel = asyncio.create_task(self._cancel_later(client, [t.id for t in tasks], batch.cancel_after_s))
            self._cancels.add(cancel)

    async def _cancel_later(self, client: resilienttask.AsyncClient, task_ids: list[str], delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        for task_id in task_ids:
            self.record.cancel_requested.add(task_id)

            async def cancel(task_id: str = task_id) -> object:
                return await client.cancel(task_id)

            try:
                await _persist(self.record, "CancelTask", cancel)
            except FailedPrecondition:
                pass  # it finished first
            except ResilientTaskError as exc:
                self.record.unexpected_errors.append(f"CancelTask {task_id}: {exc}")
