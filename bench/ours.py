"""The scenarios against our full local stack, through Envoy, with the Python SDK (definitions in peers/driver.py).

A fresh stack (scheduler, 2 gateways, workers, Envoy) per scenario on the shared embedded PostgreSQL and
Valkey; its workers load bench.handlers (the same task bodies as the peers'). Every transition is committed
to PostgreSQL as always: nothing is switched off for the benchmark.
"""

from __future__ import annotations

import asyncio
import os
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from bench.cpu_share import cpu_seconds
from bench.figures import spread_ms
from bench.memory import MemorySampler
from bench.profiling import Profiler
from bench.stamps import STAMPS_URL_ENV, count_key, parse_start, start_key, stop_key
from resilienttask import AsyncClient, Task, TaskStatus, TaskUpdate
from services.core import dispatch_functions, redis_acl
from services.core.limits import UserLimits
from services.edge.config import AuthLimits, RateLimit
from services.stack.redis_users import RedisAccess, logins, password_files
from services.stack.stack import Stack, StackConfig

# Signups one benchmark stack accepts from the one address the benchmark runs on.
BENCH_SIGNUPS = RateLimit(max_tokens=1_000, tokens_per_fill=1_000, fill_interval_s=1.0)

SYSTEM = "ours"
# "off": the scenarios run without metrics (they are on by default, as `make up` runs them).
METRICS_SWITCH_ENV = "RTASK_BENCH_METRICS"
REPO = Path(__file__).resolve().parents[1]
SUBMIT_BATCH = 50  # the most replicas one SubmitTask carries
SUBMITS_IN_FLIGHT = 8
DRAIN_TIMEOUT_S = 300
KILL_AFTER_S = 2.0
RUNNING_BEFORE_CANCEL_S = 1.5  # as for the peers (bench/peers/driver.py)


@dataclass(frozen=True)
class Servers:
    database_url: str
    redis_url: str
    stamps_url: str
    data_dir: Path


class Watcher:
    """One WatchTasks stream, read in the background: when each task was first seen in each status."""

    def __init__(self, client: AsyncClient) -> None:
        self.watch = client.watch()
        self.seen: dict[tuple[str, TaskStatus], float] = {}
        self.latest: dict[str, Task] = {}
        self._changed = asyncio.Event()
        self._ready = asyncio.Event()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for event in self.watch:
            now = time.time()
            self._ready.set()
            if isinstance(event, TaskUpdate):
                self.seen.setdefault((event.task.id, event.task.status), now)
                self.latest[event.task.id] = event.task
                self._changed.set()

    async def ready(self) -> None:
        await asyncio.wait_for(self._ready.wait(), 30)

    async def first(self, task_id: str, statuses: set[TaskStatus], timeout_s: float) -> float:
        """When the stream first showed task_id in one of statuses."""
        deadline = time.monotonic() + timeout_s
        while True:
            hits = [at for (tid, status), at in self.seen.items() if tid == task_id and status in statuses]
            if hits:
                return min(hits)
            self._changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"task {task_id} not {statuses} within {timeout_s}s")
            await asyncio.wait_for(self._changed.wait(), left)

    async def close(self) -> None:
        await self.watch.aclose()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


class OurBench:
    """Runs the scenarios for our system."""

    def __init__(self, servers: Servers, log_dir: Path, profiler: Profiler | None = None) -> None:
        self.servers = servers
        self.log_dir = log_dir
        self.profiler = profiler
        self.stamps = aioredis.Redis.from_url(servers.stamps_url)
        self.memory: dict[str, Any] = {}
        self._redis_access: RedisAccess | None = None

    def redis_access(self) -> RedisAccess:
        """Our processes log in as their roles, as in production (each command checked against its ACL user): the
        roles are added to the bench's Valkey, whose default user stays on for the peers and the stamps; and the
        dispatch function library the workers' reads call is loaded, as an operator does."""
        if self._redis_access is None:
            files = password_files(self.servers.data_dir)
            where = urlsplit(self.servers.redis_url)
            assert where.hostname is not None and where.port is not None
            with redis.Redis.from_url(self.servers.redis_url) as admin:
                for role, path in files.items():
                    rule = redis_acl.USERS[role].rule(path.read_text().strip()).split()
                    admin.execute_command("ACL", "SETUSER", *rule[1:])  # the rule without its leading "user"
                dispatch_functions.load_library(admin)
            self._redis_access = logins(files, where.hostname, where.port, int(where.path.strip("/") or 0))
        return self._redis_access

    @contextmanager
    def stack(self, workers: int, slots: int, schedulers: int = 1, limits: UserLimits | None = None) -> Iterator[Stack]:
        data_dir = self.servers.data_dir / f"stack-{uuid.uuid4().hex[:6]}"
        config = StackConfig(
            data_dir=data_dir,
            edge_port=0,
            edge_tls_port=0,
            admin_port=0,
            workers=workers,
            worker_slots=slots,
            schedulers=schedulers,
            database_url=self.servers.database_url,
            redis_url=self.servers.redis_url,
            redis_access=self.redis_access(),
            bcrypt_cost=4,
            dashboard_dir=None,
            # One user's throughput on purpose: every per-user limit off (docs/limits.md), unless told otherwise.
            limits=limits or UserLimits.unlimited(),
            metrics=metrics_on(),
            # The watch scenario signs up WATCH_USERS + 1 users at once from one address: more than the
            # default per-address signup burst (5). Logins keep their defaults.
            auth_limits=AuthLimits(signup_per_address=BENCH_SIGNUPS),
            extra_env={
                **observability_env(),
                "RTASK_WORKER_IMPORTS": "bench.handlers",
                STAMPS_URL_ENV: self.servers.stamps_url,
                "PYTHONPATH": str(REPO),
            },
        )
        with Stack(config) as stack:
            yield stack

    @asynccontextmanager
    async def client(self, stack: Stack) -> AsyncIterator[AsyncClient]:
        async with AsyncClient(stack.edge_address, timeout=60) as client:
            await client.signup(f"bench-{uuid.uuid4().hex[:12]}@example.com", "bench password")
            yield client

    async def _starts(self, label: str) -> list[tuple[float, int]]:
        raws = await self.stamps.lrange(start_key(SYSTEM, label), 0, -1)
        return [(s.at, s.pid) for s in map(parse_start, raws)]

    async def _wait_starts(self, label: str, n: int, timeout_s: float) -> list[tuple[float, int]]:
        deadline = time.monotonic() + timeout_s
        while True:
            starts = await self._starts(label)
            if len(starts) >= n or time.monotonic() > deadline:
                return starts
            await asyncio.sleep(0.002)

    async def _stop(self, label: str) -> float | None:
        raw = await self.stamps.get(stop_key(SYSTEM, label))
        return float(raw) if raw is not None else None

    # -- 1. throughput ---------------------------------------------------------------------------
    async def throughput(self, n: int, single_calls: int, workers: int, slots: int) -> dict[str, Any]:
        with self.stack(workers, slots) as stack:
            sampler = MemorySampler(service_pids(stack))
            self.memory["at_rest"] = sampler.sample()
            async with self.client(stack) as client:
                label = uuid.uuid4().hex[:12]
                payload = {"label": label}
                gate = asyncio.Semaphore(SUBMITS_IN_FLIGHT)

                async def submit(replicas: int) -> None:
                    async with gate:
                        await client.submit("noop", kind="bench.noop", payload=payload, replicas=replicas)

                pids = service_pids(stack)
                with sampler.running(), self._profiling(stack, "throughput"):
                    cpu_before = await asyncio.to_thread(cpu_seconds, pids)
                    first = time.time()
                    sizes = [min(SUBMIT_BATCH, n - i) for i in range(0, n, SUBMIT_BATCH)]
                    await asyncio.gather(*(submit(size) for size in sizes))
                    enqueued = time.time()
                    ran = await self._until(lambda: self._count(label, n), DRAIN_TIMEOUT_S, 0.01)
                    durable = await self._until(lambda: self._succeeded(client, n), DRAIN_TIMEOUT_S, 0.02)
                    cpu_after = await asyncio.to_thread(cpu_seconds, pids)
                stats = await client.stats()
                self.memory["under_load"] = sampler.peak
                single = uuid.uuid4().hex[:12]
                with self._profiling(stack, "single-submit"):
                    started = time.time()
                    for _ in range(single_calls):
                        await client.submit("noop", kind="bench.noop", payload={"label": single})
                    single_s = time.time() - started
                await self._until(lambda: self._succeeded(client, n + single_calls), DRAIN_TIMEOUT_S, 0.05)
            metrics = await asyncio.to_thread(scrape_finished, stack) if metrics_on() else None
        result: dict[str, Any] = {
            "n": n,
            "metrics_scraped": metrics,
            "enqueue_method": f"SubmitTask with {SUBMIT_BATCH} replicas, {SUBMITS_IN_FLIGHT} calls in flight",
            "enqueue_per_s": round(n / (enqueued - first)),
            "single_call_enqueue_per_s": round(single_calls / single_s),
            "workers": f"{workers} processes x {slots} slots",
            "failed": stats.failed,
        }
        if durable is None:
            result["note"] = f"{stats.succeeded} of {n} SUCCEEDED within {DRAIN_TIMEOUT_S}s"
            return result
        result["drain_per_s"] = round(n / (durable - first))
        # CPU of our processes (and Envoy) per task over the drain: less swayed by the other load on a shared
        # machine than the rate, and on 2 cores the rate is bounded by 2 / (CPU seconds per task, all processes).
        spent = {name: cpu_after[name] - cpu_before[name] for name in pids}
        result["service_cpu_ms_per_task"] = round(sum(spent.values()) / n * 1000, 3)
        result["cpu_ms_per_task_by_role"] = {
            role: round(sum(v for name, v in spent.items() if name.split("-")[0] == role) / n * 1000, 3)
            for role in sorted({name.split("-")[0] for name in spent})
        }
        result["drain_wall_s"] = round(durable - first, 2)
        if ran is not None:
            result["handlers_done_per_s"] = round(n / (ran - first))
        return result

    async def _count(self, label: str, n: int) -> float | None:
        return time.time() if int(await self.stamps.get(count_key(SYSTEM, label)) or 0) >= n else None

    async def _succeeded(self, client: AsyncClient, n: int) -> float | None:
        return time.time() if (await client.stats()).succeeded >= n else None

    async def _until(self, probe: Callable[[], Any], timeout_s: float, interval_s: float) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            value = await probe()
            if value is not None or time.monotonic() > deadline:
                return value
            await asyncio.sleep(interval_s)

    @contextmanager
    def _profiling(self, stack: Stack, scenario: str) -> Iterator[None]:
        if self.profiler is None:
            yield
            return
        with self.profiler.recording(scenario, service_pids(stack)):
            yield

    # -- 2. latency ------------------------------------------------------------------------------
    async def latency(self, n: int, warmup: int, workers: int, slots: int) -> dict[str, Any]:
        to_start: list[float] = []
        to_seen: list[float] = []
        legs: dict[str, list[float]] = {leg: [] for leg in LATENCY_LEGS}
        with self.stack(workers, slots) as stack:
            async with self.client(stack) as client:
                watcher = Watcher(client)
                await watcher.ready()
                try:
                    with self._profiling(stack, "latency"):
                        for i in range(warmup + n):
                            label = uuid.uuid4().hex[:12]
                            before = time.time()
                            (task,) = await client.submit("stamp", kind="bench.stamp", payload={"label": label})
                            seen = await watcher.first(task.id, {TaskStatus.SUCCEEDED, TaskStatus.FAILED}, 30)
                            starts = await self._wait_starts(label, 1, 5)
                            if i >= warmup and starts:
                                to_start.append(starts[0][0] - before)
                                to_seen.append(seen - before)
                                done = watcher.latest[task.id]
                                for leg, span in zip(
                                    LATENCY_LEGS, _legs(before, done, starts[0][0], seen), strict=True
                                ):
                                    legs[leg].append(span)
                finally:
                    await watcher.close()
        return {
            "n": len(to_start),
            "start_ms": spread_ms(to_start),
            "seen_ms": spread_ms(to_seen),
            "legs_p50_ms": {leg: spread_ms(spans).get("p50") for leg, spans in legs.items()},
            "result_api": "WatchTasks stream (pushed SUCCEEDED event), through Envoy",
        }

    # -- 3. parallel sleep -----------------------------------------------------------------------
    async def parallel_sleep(self, n: int, seconds: float, workers: int, slots: int) -> dict[str, Any]:
        label = uuid.uuid4().hex[:12]
        with self.stack(workers, slots) as stack:
            async with self.client(stack) as client:
                watcher = Watcher(client)
                await watcher.ready()
                try:
                    first = time.time()
                    sizes = [min(SUBMIT_BATCH, n - i) for i in range(0, n, SUBMIT_BATCH)]
                    batches = await asyncio.gather(
                        *(
                            client.submit(
                                "sleep", kind="bench.sleep", payload={"label": label}, workload=seconds, replicas=size
                            )
                            for size in sizes
                        )
                    )
                    tasks = [t for batch in batches for t in batch]
                    done = [await watcher.first(t.id, {TaskStatus.SUCCEEDED}, seconds * 10 + 30) for t in tasks]
                finally:
                    await watcher.close()
                starts = [at for at, _pid in await self._starts(label)]
        return {
            "n": n,
            "slots": workers * slots,
            "wall_s": round(max(done) - first, 2),
            "wall_basis": "first submit → last SUCCEEDED seen on the watch stream",
            "started_within_0_5_s": sum(1 for s in starts if s - first <= 0.5),
            "last_start_s": round(max(starts) - first, 2),
        }

    # -- 4. cancel -------------------------------------------------------------------------------
    async def cancel(self, rounds: int, workers: int, slots: int) -> dict[str, Any]:
        call_s: list[float] = []
        stopped_s: list[float] = []
        seen_s: list[float] = []
        missed = 0
        forced = 0
        with self.stack(workers, slots) as stack:
            async with self.client(stack) as client:
                watcher = Watcher(client)
                await watcher.ready()
                try:
                    for _ in range(rounds):
                        label = uuid.uuid4().hex[:12]
                        (task,) = await client.submit(
                            "sleep", kind="bench.sleep", payload={"label": label}, workload=30
                        )
                        if not await self._wait_starts(label, 1, 30):
                            raise TimeoutError("the 30 s task did not start")
                        await asyncio.sleep(RUNNING_BEFORE_CANCEL_S)
                        before = time.time()
                        await client.cancel(task.id)
                        call_s.append(time.time() - before)
                        seen = await watcher.first(task.id, {TaskStatus.CANCELLED}, 30)
                        seen_s.append(seen - before)
                        stopped = await self._until(partial(self._stop, label), 5, 0.002)
                        if stopped is None:
                            missed += 1
                        else:
                            stopped_s.append(stopped - before)
                        if "cooperative" not in (await client.get(task.id)).error:
                            forced += 1
                finally:
                    await watcher.close()
        return {
            "rounds": rounds,
            "method": "CancelTask (pushed to the worker; the handler's asyncio task is cancelled)",
            "stopped_ms": spread_ms(stopped_s),
            "seen_ms": spread_ms(seen_s),
            "call_ms": spread_ms(call_s),
            "missed": missed,
            "forced": forced,
        }

    # -- 5. crash --------------------------------------------------------------------------------
    async def crash(self, give_up_s: float, workers: int, slots: int) -> dict[str, Any]:
        """Kill -9 the worker running a 20 s task 2 s after it started; a fresh worker starts at once."""
        label = uuid.uuid4().hex[:12]
        with self.stack(workers, slots) as stack:
            async with self.client(stack) as client:
                (task,) = await client.submit("crash", kind="bench.sleep", payload={"label": label}, workload=20)
                starts = await self._wait_starts(label, 1, 30)
                if not starts:
                    raise TimeoutError("the 20 s task did not start")
                await asyncio.sleep(max(0.0, starts[0][0] + KILL_AFTER_S - time.time()))
                running = await client.get(task.id)
                victim = "-".join(running.worker_id.split("-")[:2])  # worker-N-<hex> → worker-N
                killed = time.time()
                stack.processes[victim].kill()
                await asyncio.to_thread(stack.start_worker, victim)
                again = await self._wait_starts(label, 2, give_up_s)
                if len(again) < 2:
                    return {"rerun": False, "give_up_s": give_up_s}
                final = await client.wait(task.id, timeout=60)
        return {
            "rerun": True,
            "rerun_after_s": round(again[1][0] - killed, 1),
            "final_status": str(final[0].status),
            "attempt": final[0].attempt,
        }

    async def healthy_long_task(self, seconds: float, settle_s: float, workers: int, slots: int) -> dict[str, Any]:
        label = uuid.uuid4().hex[:12]
        with self.stack(workers, slots) as stack:
            async with self.client(stack) as client:
                (task,) = await client.submit("healthy", kind="bench.sleep", payload={"label": label}, workload=seconds)
                if not await self._wait_starts(label, 1, 30):
                    raise TimeoutError("the long task did not start")
                final = await client.wait(task.id, timeout=seconds + 60)
                await asyncio.sleep(settle_s)
                runs = len(await self._starts(label))
        return {"seconds": seconds, "runs": runs, "final_status": str(final[0].status), "attempt": final[0].attempt}

    async def close(self) -> None:
        await self.stamps.aclose()


# Where the time of one sequential task goes, from the task's own timestamps (PostgreSQL's now() of each
# transaction: created_at is the submit transaction's start, started_at StartTasks', finished_at FinishTasks').
LATENCY_LEGS = (
    "submit call → created_at (client, Envoy, gateway up to its transaction)",
    "created_at → started_at (commit, dispatch XADD, worker read, StartTasks via Envoy)",
    "started_at → handler start (StartTasks commit and reply, worker launches the handler)",
    "handler start → finished_at (handler, FinishTasks via Envoy)",
    "finished_at → SUCCEEDED seen (commit, event append, gateway fan-out, Envoy)",
)


def _legs(before: float, task: Task, handler_start: float, seen: float) -> list[float]:
    assert task.created_at is not None and task.started_at is not None and task.finished_at is not None
    created, started, finished = (t.timestamp() for t in (task.created_at, task.started_at, task.finished_at))
    return [created - before, started - created, handler_start - started, finished - handler_start, seen - finished]


def metrics_on() -> bool:
    """Whether our processes serve /metrics: as `make up` runs them unless METRICS_SWITCH_ENV says "off"."""
    return os.environ.get(METRICS_SWITCH_ENV, "on") != "off"


def observability_env() -> dict[str, str]:
    """The tracing and metrics settings of the benchmark's own environment (OTEL_*, RTASK_METRICS_*), given to every
    process of ours explicitly. With metrics on, the launcher gives each process a /metrics port of its own (a
    free one, so it knows where to scrape): the environment's RTASK_METRICS_PORT and _HOST do not override it."""
    own = ("RTASK_METRICS_PORT", "RTASK_METRICS_HOST") if metrics_on() else ()
    return {k: v for k, v in os.environ.items() if k.startswith(("RTASK_METRICS_", "OTEL_")) and k not in own}


def scrape_finished(stack: Stack) -> dict[str, int]:
    """Scrape every process's /metrics once: how many answered, and the tasks their counters say finished. Proof
    that metrics were on in a run (bench/observability_ab.py prints it), taken after the figures are measured."""
    urls = [url for name in stack.processes if (url := stack.metrics_url(name)) is not None]
    finished = 0
    for url in urls:
        with urllib.request.urlopen(url, timeout=10) as reply:
            text = reply.read().decode()
        for family in text_string_to_metric_families(text):
            if family.name == "resilienttask_tasks_finished":
                finished += int(sum(sample.value for sample in family.samples if sample.name.endswith("_total")))
    return {"endpoints": len(urls), "tasks_finished_total": finished}


def service_pids(stack: Stack) -> dict[str, int]:
    """pid of every service process of the stack, by name (worker-1, gateway-2, scheduler-1, envoy)."""
    return {
        name: proc.pid
        for name, proc in stack.processes.items()
        if name.split("-")[0] in {"worker", "gateway", "scheduler", "envoy"} and proc.alive()
    }
