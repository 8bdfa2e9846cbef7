"""Faults injected into a running stack, and how long the system took to recover from each.

Recovery of a killed worker: until every task it held is running elsewhere or finished. Of anything else:
until a fresh task submitted after the fault has succeeded end to end.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
import uuid
from dataclasses import dataclass, field

import asyncpg

import resilienttask
from resilienttask.errors import ResilientTaskError
from services.stack.stack import Stack
from tests.chaos.load import TRANSIENT
from tests.helpers import eventually

RECOVERY_TIMEOUT_S = 180.0


@dataclass
class FaultRecord:
    name: str
    target: str
    at_s: float  # since the start of the run
    recovered_s: float | None = None
    detail: str = ""
    # Wall-clock span (epoch seconds) a store or Envoy was down, for matching against the task history.
    down: tuple[float, float] | None = None


@dataclass
class FaultLog:
    records: list[FaultRecord] = field(default_factory=list)
    # Worker ids whose process was killed, and when (epoch seconds): takeovers of their tasks are expected.
    killed_workers: dict[str, float] = field(default_factory=dict)

    def outages(self, target: str) -> list[tuple[float, float]]:
        return [r.down for r in self.records if r.target == target and r.down is not None]


class FaultInjector:
    def __init__(
        self, stack: Stack, canary: resilienttask.AsyncClient, rng: random.Random, outage_s: float, started: float
    ) -> None:
        self.stack = stack
        self.canary = canary
        self.rng = rng
        self.outage_s = outage_s
        self.started = started
        self.log = FaultLog()

    async def inject(self, name: str) -> FaultRecord:
        action = {
            "kill-worker": self._kill_worker,
            "kill-gateway": self._kill_gateway,
            "kill-scheduler": self._kill_scheduler,
            "restart-valkey": self._restart_valkey,
            "restart-postgres": self._restart_postgres,
            "restart-envoy": self._restart_envoy,
        }[name]
        record = FaultRecord(name, "", time.monotonic() - self.started)
        self.log.records.append(record)
        await action(record)
        return record

    # -- the faults ------------------------------------------------------------------------------------------
    async def _kill_worker(self, record: FaultRecord) -> None:
        name = self.rng.choice(self.stack.names("worker"))
        process = self.stack.processes[name]
        worker_id = process.env["RTASK_WORKER_ID"]
        held = await self._running_on(worker_id)
        fault_at = time.monotonic()
        self.log.killed_workers[worker_id] = time.time()
        await asyncio.to_thread(process.kill)
        record.target, record.detail = worker_id, f"held {len(held)} running tasks"
        await asyncio.to_thread(self.stack.restart, name)

        async def taken_over() -> bool:
            return not (await self._running_on(worker_id)) & held

        await eventually(taken_over, timeout_s=RECOVERY_TIMEOUT_S, interval_s=0.2, message=f"{worker_id}'s tasks")
        record.recovered_s = time.monotonic() - fault_at

    async def _kill_gateway(self, record: FaultRecord) -> None:
        name = self.rng.choice(self.stack.names("gateway"))
        record.target = name
        fault_at = time.monotonic()
        await asyncio.to_thread(self.stack.processes[name].kill)
        await asyncio.to_thread(self.stack.restart, name)
        record.recovered_s = await self._canary_since(fault_at)

    async def _kill_scheduler(self, record: FaultRecord) -> None:
        name = self.rng.choice(self.stack.names("scheduler"))
        record.target = name
        fault_at = time.monotonic()
        await asyncio.to_thread(self.stack.processes[name].kill)
        await asyncio.to_thread(self.stack.restart, name)
        record.recovered_s = await self._canary_since(fault_at)

    async def _outage(self, record: FaultRecord, name: str, sig: int) -> None:
        record.target = name
        record.detail = f"down {self.outage_s:g} s"
        fault_at, down_from = time.monotonic(), time.time()
        await asyncio.to_thread(self.stack.processes[name].stop, 30, sig)
        await asyncio.sleep(self.outage_s)  # the outage itself, not a wait for anything
        await asyncio.to_thread(self.stack.relaunch, name)
        record.down = (down_from, time.time())
        record.recovered_s = await self._canary_since(fault_at)

    async def _restart_valkey(self, record: FaultRecord) -> None:
        await self._outage(record, "valkey", signal.SIGTERM)

    async def _restart_postgres(self, record: FaultRecord) -> None:
        # SIGINT is PostgreSQL's fast shutdown: clients are disconnected, the data is kept.
        await self._outage(record, "postgres", signal.SIGINT)

    async def _restart_envoy(self, record: FaultRecord) -> None:
        await self._outage(record, "envoy", signal.SIGTERM)

    # -- probes ------------------------------------------------------------------------------------------------
    async def _running_on(self, worker_id: str) -> set[str]:
        conn = await asyncpg.connect(self.stack.database_url)
        try:
            rows = await conn.fetch("SELECT id FROM tasks WHERE status IN (2, 3) AND worker_id = $1", worker_id)
        finally:
            await conn.close()
        return {str(r["id"]) for r in rows}

    async def _canary_since(self, fault_at: float) -> float:
        """Seconds from the fault until a task submitted after it succeeded."""
        request_id = f"canary-{uuid.uuid4()}"
        deadline = time.monotonic() + RECOVERY_TIMEOUT_S
        while True:
            try:
                (task,) = await self.canary.submit("canary", workload=0, request_id=request_id)
                break
            except ResilientTaskError as exc:
                if exc.code not in TRANSIENT or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

        async def succeeded() -> bool:
            try:
                current = await self.canary.get(task.id)
            except ResilientTaskError as exc:
                if exc.code in TRANSIENT:
                    return False
                raise
            assert not current.done or current.succeeded, f"canary {task.id} ended {current.status}: {current.error}"
            return current.succeeded

        await eventually(succeeded, timeout_s=max(1.0, deadline - time.monotonic()), interval_s=0.1, message="canary")
        return time.monotonic() - fault_at
