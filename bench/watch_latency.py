"""WatchTasks push latency with many watchers, and what they cost a gateway in memory.

    .venv/bin/python bench/watch_latency.py                   # 1,000 watchers, throwaway local stack
    .venv/bin/python bench/watch_latency.py --watchers 2000 --users 20 --rounds 100
    .venv/bin/python bench/watch_latency.py --users 1 --replicas 20    # bursts: 20 events per round
    .venv/bin/python bench/watch_latency.py --users 1 --replicas 20 --single-events  # as clients without batches

A throwaway stack (2 gateways, 1 scheduler, no workers, so the only changes are the benchmark's own) is
started; `--users` accounts each get an equal share of `--watchers` streams, all through Envoy, spread
over `--channels` HTTP/2 connections. Each round submits one task for one user (users take turns) and
waits until every watcher of that user has received the task's first event. With `--replicas N` a round
submits N tasks in one call, a burst of N events appended together, and is timed by the last one's arrival.

Latency is the time to the event's arrival at a watcher, over every (watcher, round) pair after the
warm-up, measured from three points on the same machine clock:
- the event's append to Redis, right after the commit: the time in its history entry id (milliseconds,
  so each sample may read up to 1 ms long); this is the push path itself (Redis, the gateway's reader,
  the stats count, the watcher's call, Envoy);
- the task's created_at: PostgreSQL's now(), the start of the inserting transaction. This adds the
  commit itself (a WAL flush) and what SubmitTask does between its commit and the append (it dispatches
  the task and records that in a second commit first);
- the SubmitTask reply reaching the benchmark: the gateway replies after appending the event, so this
  understates the push latency (it can even be negative).
"Fan-out complete" is, per round, the latency (from the append) of the last of that user's watchers.

Memory is each gateway's resident set (VmRSS) before the watchers connect and once all of them have
their snapshot; the difference is scaled to 1,000 watchers. Gateway CPU is the user+system time both
gateways spent during the rounds, per delivery. The watchers run in this one Python process,
on the same two cores as the stack, so the figures include the client's own share of the machine
(printed too: this process's CPU per delivery). The watchers ask for batches, as the SDK does; a round
is one event, so a round's deliveries are single-event messages all the same.

push_latency() and submit_batch_latency() are the same measurements for the benchmark suite (bench/run.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import duration_pb2

from bench.ours import BENCH_SIGNUPS
from resilienttask.v1 import auth_pb2, auth_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc
from services.core.events import parse_stream_id
from services.core.limits import UserLimits
from services.edge.config import AuthLimits
from services.gateway.watch import tokens
from services.stack.stack import Stack, StackConfig

Metadata = tuple[tuple[str, str], ...]
# A round whose deliveries are not all in by then counts the rest as missing.
ROUND_TIMEOUT_S = 30.0
# Replicas per SubmitTask in submit_batch_latency: the most one call may carry.
BATCH_REPLICAS = 50


def bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


def percentile(samples: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (fraction in 0..1) of a non-empty sample."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))]


def spread_ms(samples_ms: Sequence[float]) -> dict[str, float]:
    if not samples_ms:
        return {}
    return {name: round(percentile(samples_ms, q), 2) for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))}


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_s(pid: int) -> float:
    """User plus system CPU time a process has used, in seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Round:
    """One submitted task: when its change was made, and when each watcher of its owner saw it."""

    expected: int
    created_at: float = 0.0
    replied_at: float = 0.0
    appended_at: float = 0.0
    received: list[float] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def receive(self, at: float) -> None:
        self.received.append(at)
        if len(self.received) >= self.expected:
            self.done.set()


@dataclass
class Figures:
    """Latency samples in ms over every delivery, and per round the latency of its last delivery."""

    from_append: list[float] = field(default_factory=list)
    from_created: list[float] = field(default_factory=list)
    from_reply: list[float] = field(default_factory=list)
    fan_out: list[float] = field(default_factory=list)
    missing: int = 0


class Fanout:
    """Watchers of several users on a few channels, and the rounds that measure them."""

    def __init__(
        self,
        edge: str,
        users: Sequence[Metadata],
        watchers: int,
        channels: int,
        kind: str,
        payload: dict[str, Any] | None = None,
        replicas: int = 1,
        accept_batches: bool = True,
    ) -> None:
        self.users = list(users)
        self.watcher_count = watchers
        self.kind = kind
        # Tasks per round, in one SubmitTask: their events are appended together, a burst for every watcher.
        self.replicas = replicas
        # As the SDK does; without, every event is a message of its own (as for clients that predate batches).
        self.accept_batches = accept_batches
        self.payload = payload or {}
        # Every event received, alone or in a batch (all statuses, progress included): the load the fan-out carried.
        self.event_messages = 0
        self.channels = [grpc.aio.insecure_channel(edge) for _ in range(channels)]
        self.stub = scheduler_pb2_grpc.SchedulerServiceStub(self.channels[0])
        self.per_user = [len(range(u, watchers, len(self.users))) for u in range(len(self.users))]
        # Events are matched by task id; one may arrive before the SubmitTask reply names it.
        self.rounds: dict[str, Round] = {}
        self.early: dict[str, list[float]] = {}
        self.appended: dict[str, float] = {}
        self.ready = 0
        self.all_ready = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    async def open(self) -> None:
        for i in range(self.watcher_count):
            channel = self.channels[i % len(self.channels)]
            self.tasks.append(asyncio.create_task(self._watch(channel, self.users[i % len(self.users)])))
        ready = asyncio.create_task(self.all_ready.wait())
        done, _ = await asyncio.wait([ready, *self.tasks], timeout=120, return_when=asyncio.FIRST_COMPLETED)
        if ready not in done:
            ready.cancel()
            failure = next((t.exception() for t in done if t.exception() is not None), None)
            raise RuntimeError(f"{self.ready} of {self.watcher_count} watchers got their snapshot: {failure!r}")

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for channel in self.channels:
            await channel.close()

    async def _watch(self, channel: grpc.aio.Channel, metadata: Metadata) -> None:
        call = scheduler_pb2_grpc.SchedulerServiceStub(channel).WatchTasks(
            scheduler_pb2.WatchTasksRequest(accept_batches=self.accept_batches), metadata=metadata
        )
        async for message in call:
            kind = message.WhichOneof("kind")
            if kind == "snapshot":
                self.ready += 1
                if self.ready == self.watcher_count:
                    self.all_ready.set()
            elif kind == "event":
                self._saw(message.event)
            elif kind == "events":
                for event in message.events.events:
                    self._saw(event)

    def _saw(self, event: scheduler_pb2.TaskEvent) -> None:
        """One event delivered to one watcher (alone or in a batch, each carries its own resume token)."""
        self.event_messages += 1
        # A round is timed by its last task's creation: events come in order, so the others came before it.
        if event.task.version != 1 or event.task.replica_index != self.replicas - 1:
            return
        now = time.time()
        task_id = event.task.id
        if task_id not in self.appended:
            self.appended[task_id] = parse_stream_id(tokens.decode(event.resume_token))[0] / 1000
        if task_id in self.rounds:
            self.rounds[task_id].receive(now)
        else:
            self.early.setdefault(task_id, []).append(now)

    async def round(self, user: int) -> Round:
        """Submit the round's tasks for a user; wait until all that user's watchers saw them (or a timeout)."""
        request = scheduler_pb2.SubmitTaskRequest(
            name="watch bench",
            kind=self.kind,
            workload=duration_pb2.Duration(seconds=1),
            request_id=str(uuid.uuid4()),
            replicas=self.replicas,
        )
        request.payload.update(self.payload)
        reply = await self.stub.SubmitTask(request, metadata=self.users[user])
        task = reply.tasks[-1]
        round_ = Round(self.per_user[user], task.created_at.ToMicroseconds() / 1e6, time.time())
        self.rounds[task.id] = round_
        for at in self.early.pop(task.id, []):
            round_.receive(at)
        with suppress(TimeoutError):
            await asyncio.wait_for(round_.done.wait(), ROUND_TIMEOUT_S)
        del self.rounds[task.id]
        round_.appended_at = self.appended.pop(task.id, 0.0)
        return round_

    async def measure(self, rounds: int, warmup: int, interval_s: float = 0.0) -> Figures:
        figures = Figures()
        for r in range(warmup + rounds):
            user = r % len(self.users)
            round_ = await self.round(user)
            if r >= warmup and round_.received:
                figures.from_append += [(t - round_.appended_at) * 1000 for t in round_.received]
                figures.from_created += [(t - round_.created_at) * 1000 for t in round_.received]
                figures.from_reply += [(t - round_.replied_at) * 1000 for t in round_.received]
                figures.fan_out.append((max(round_.received) - round_.appended_at) * 1000)
            if r >= warmup:
                figures.missing += round_.expected - len(round_.received)
            if interval_s:
                await asyncio.sleep(interval_s)
        return figures


async def push_latency(
    edge: str,
    users: Sequence[Metadata],
    kind: str,
    payload: dict[str, Any],
    watchers: int,
    events: int,
    interval_s: float,
) -> dict[str, Any]:
    """`watchers` shared equally by `users`; `events` submissions `interval_s` apart, the users taking
    turns (for bench/run.py)."""
    fanout = Fanout(edge, users, watchers, max(1, watchers // 100), kind, payload)
    try:
        await fanout.open()
        # One warm-up event per user first: its watchers' first delivery pays for cold caches (stats, statements).
        started, counted = time.monotonic(), fanout.event_messages
        figures = await fanout.measure(events, warmup=len(users), interval_s=interval_s)
        delivered_per_s = (fanout.event_messages - counted) / (time.monotonic() - started)
    finally:
        await fanout.close()
    return {
        "push_ms": spread_ms(figures.from_append),
        "event_messages_per_s": round(delivered_per_s),
        "watchers": watchers,
        "users": len(users),
        "events": events,
        "deliveries": len(figures.from_append),
        "missing": figures.missing,
    }


async def submit_batch_latency(client: Any, kind: str, calls: int) -> dict[str, Any]:
    """Latency of SubmitTask calls carrying the most replicas one call may hold (for bench/run.py).

    `client` is a resilienttask.AsyncClient.
    """
    samples: list[float] = []
    for _ in range(calls):
        started = time.perf_counter()
        await client.submit("batch bench", kind=kind, replicas=BATCH_REPLICAS)
        samples.append((time.perf_counter() - started) * 1000)
    return {"submit_ms": spread_ms(samples), "calls": calls, "replicas": BATCH_REPLICAS}


# -- the standalone benchmark ---------------------------------------------------------------------------
@contextmanager
def throwaway_stack() -> Iterator[Stack]:
    with tempfile.TemporaryDirectory(prefix="rtask-bench-") as folder:
        config = StackConfig(
            data_dir=Path(folder),
            edge_port=0,
            edge_tls_port=0,
            admin_port=0,
            workers=0,
            bcrypt_cost=4,
            dashboard_dir=None,
            # Many watchers and submissions per user on purpose: every per-user limit off (docs/limits.md).
            limits=UserLimits.unlimited(),
            # --users signups at once from one address: more than the default per-address signup burst (5).
            auth_limits=AuthLimits(signup_per_address=BENCH_SIGNUPS),
        )
        with Stack(config) as stack:
            yield stack


async def signup_users(edge: str, count: int) -> list[Metadata]:
    async with grpc.aio.insecure_channel(edge) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        users = []
        for _ in range(count):
            reply = await stub.Signup(
                auth_pb2.SignupRequest(email=f"bench-{uuid.uuid4().hex[:12]}@example.com", password="bench password")
            )
            users.append(bearer(reply.access_token))
        # Warm both gateways' pools and code paths before the memory baseline.
        scheduler = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        for metadata in users:
            await scheduler.GetStats(scheduler_pb2.GetStatsRequest(), metadata=metadata)
    return users


async def run(stack: Stack, args: argparse.Namespace) -> None:
    users = await signup_users(stack.edge_address, args.users)
    gateways = {name: stack.processes[name].pid for name in stack.names("gateway")}
    before = {name: rss_kib(pid) for name, pid in gateways.items()}
    # No workers: the tasks stay queued, so the only events are their creations.
    fanout = Fanout(
        stack.edge_address,
        users,
        args.watchers,
        args.channels,
        "sleep",
        replicas=args.replicas,
        accept_batches=not args.single_events,
    )
    try:
        started = time.monotonic()
        await fanout.open()
        connect_s = time.monotonic() - started
        after = {name: rss_kib(pid) for name, pid in gateways.items()}
        cpu_before, watchers_cpu_before = sum(cpu_s(pid) for pid in gateways.values()), time.process_time()
        figures = await fanout.measure(args.rounds, args.warmup)
        gateway_cpu_s = sum(cpu_s(pid) for pid in gateways.values()) - cpu_before
        watchers_cpu_s = time.process_time() - watchers_cpu_before
    finally:
        await fanout.close()

    print(
        f"{args.watchers} watchers ({args.users} users x {args.watchers // args.users}) through Envoy "
        f"on {args.channels} connections; all snapshots in {connect_s:.2f} s"
    )
    print(
        f"{args.rounds} rounds of {args.replicas} task(s) after {args.warmup} warm-up: "
        f"{len(figures.from_append)} (watcher, round) arrivals timed, {figures.missing} missing"
    )
    print(f"{'push latency (ms)':<52} {'p50':>8} {'p99':>8} {'max':>8}")
    for name, samples in (
        ("from the event's append to Redis", figures.from_append),
        ("from the change's transaction start (created_at)", figures.from_created),
        ("from the SubmitTask reply", figures.from_reply),
        ("fan-out complete (last watcher of a round)", figures.fan_out),
    ):
        p50, p99 = statistics.median(samples), percentile(samples, 0.99)
        print(f"  {name:<50} {p50:>8.2f} {p99:>8.2f} {max(samples):>8.2f}")
    print(f"{'gateway memory (VmRSS, MiB)':<32} {'before':>8} {'after':>8} {'delta':>8}")
    for name in before:
        delta = after[name] - before[name]
        print(f"  {name:<30} {before[name] / 1024:>8.1f} {after[name] / 1024:>8.1f} {delta / 1024:>8.1f}")
    # One delivery is one event reaching one watcher (a round of several tasks is as many deliveries).
    deliveries = len(figures.from_append) * args.replicas * (args.warmup + args.rounds) / args.rounds
    print(f"gateway CPU while pushing: {gateway_cpu_s * 1e6 / deliveries:.0f} µs per delivery (both gateways)")
    # The watchers share the two cores with the stack: their own cost bounds how fast a round can complete.
    print(f"watchers' CPU while receiving: {watchers_cpu_s * 1e6 / deliveries:.0f} µs per delivery (this process)")
    total_kib = sum(after.values()) - sum(before.values())
    print(f"memory per 1,000 watchers (all gateways together): {total_kib / 1024 * 1000 / args.watchers:.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--channels", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument(
        "--replicas", type=int, default=1, help="tasks per round in one SubmitTask (a burst of events; at most 50)"
    )
    parser.add_argument(
        "--single-events", action="store_true", help="watchers ask for one event per message (no batches)"
    )
    args = parser.parse_args()
    if args.users < 1 or args.watchers < args.users or args.channels < 1 or args.rounds < 1:
        parser.error("need at least one user, one watcher per user, one channel and one round")
    if not 1 <= args.replicas <= BATCH_REPLICAS:
        parser.error(f"--replicas is 1..{BATCH_REPLICAS}")
    with throwaway_stack() as stack:
        asyncio.run(run(stack, args))


if __name__ == "__main__":
    main()
