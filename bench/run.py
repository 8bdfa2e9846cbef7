"""One entry point for the benchmarks: `make bench` (full) and `make bench-quick` (short).

    .venv/bin/python -m bench.run [--quick] [--only throughput,latency,ours,celery] [--out bench/results]
                                  [--profile] [--doc docs/benchmarks.md]

Starts one embedded PostgreSQL and one embedded Valkey; every system uses that Valkey (ours database 0,
each Redis peer its own database, the bodies' stamps database 5), ours also the PostgreSQL, and Procrastinate
its own database on that PostgreSQL. Each scenario starts
the workers it needs and stops them afterwards. Prints each figure as it comes, then writes results.json,
results.md and results.png into --out. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import report
from bench.memory import per_role
from bench.ours import OurBench, Servers
from bench.peers.base import WorkerPlan
from bench.peers.driver import PeerBench, load_peer
from bench.profiling import Profiler
from services.stack.embedded import postgres_process, postgres_url, valkey_process, wait_for_port
from services.stack.ports import free_port
from services.stack.processes import ManagedProcess

SCENARIOS = ("throughput", "latency", "sleep", "cancel", "crash", "watch")
PEERS = ("celery", "rq", "arq", "dramatiq", "procrastinate")
SYSTEMS = ("ours", *PEERS)
PEER_DB = {"celery": 1, "rq": 2, "arq": 3, "dramatiq": 4}
# Peers that queue in PostgreSQL: each in a database of its own (the peer creates it) on the bench's server.
PEER_PG_DATABASE = {"procrastinate": "bench_procrastinate"}
STAMPS_DB = 5


@dataclass(frozen=True)
class Sizes:
    """How much each scenario does: the full run follows the issue, --quick is for trying the harness."""

    noops: int
    rq_noops: int  # RQ forks a process per job (≈60/s): a quarter of the tasks keeps its drain near a minute
    single_calls: int
    latency_tasks: int
    latency_warmup: int
    sleeps: int
    cancels: int
    crash_give_up_s: float
    healthy_task_s: float
    watchers: int
    watch_events: int
    batch_submits: int


# Users whose watchers share the 1,000 in the watch scenario's main figure (100 watchers each).
WATCH_USERS = 10
FULL = Sizes(20_000, 5_000, 1_000, 300, 10, 100, 15, 90.0, 30.0, 1000, 20, 20)
QUICK = Sizes(2_000, 500, 200, 50, 3, 100, 3, 20.0, 15.0, 100, 5, 5)


def parse_only(raw: str) -> tuple[set[str], set[str]]:
    scenarios, systems = set(), set()
    for token in filter(None, (t.strip() for t in raw.split(","))):
        if token in SCENARIOS:
            scenarios.add(token)
        elif token in SYSTEMS:
            systems.add(token)
        else:
            raise argparse.ArgumentTypeError(f"unknown scenario or system {token!r}: {SCENARIOS + SYSTEMS}")
    return scenarios or set(SCENARIOS), systems or set(SYSTEMS)


@contextmanager
def stores(data_dir: Path, log_dir: Path, pg_settings: Mapping[str, str] | None = None) -> Iterator[tuple[str, str]]:
    """The embedded PostgreSQL (with these extra settings) and Valkey every system shares, stopped at the end."""
    procs: list[ManagedProcess] = []
    try:
        pg_port = free_port()
        pg = postgres_process(data_dir, pg_port, log_dir=log_dir, echo=None, settings=pg_settings)
        procs.append(pg)
        pg.start()
        wait_for_port(pg, pg_port)
        valkey_port = free_port()
        valkey = valkey_process(data_dir, valkey_port, log_dir=log_dir, echo=None)
        procs.append(valkey)
        valkey.start()
        wait_for_port(valkey, valkey_port)
        yield postgres_url(pg_port), f"redis://127.0.0.1:{valkey_port}"
    finally:
        for proc in reversed(procs):
            proc.stop(grace_s=15, sig=signal.SIGINT if proc.name == "postgres" else signal.SIGTERM)


def source_version() -> str:
    """The commit measured, marked when the working tree had uncommitted changes to the services or the SDK."""

    def git(*argv: str) -> str:
        return subprocess.run(["git", *argv], capture_output=True, text=True, check=False).stdout.strip()

    dirty = git("status", "--porcelain", "--", "services", "clients/python")
    return git("rev-parse", "--short", "HEAD") + (" with uncommitted changes to services/ or the SDK" if dirty else "")


def machine() -> dict[str, Any]:
    free = subprocess.run(["free", "-h"], capture_output=True, text=True, check=False).stdout.rstrip()
    return {
        "nproc": os.cpu_count(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "free_h": "\n".join(free.splitlines()[:2]),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


class Runner:
    def __init__(
        self,
        args: argparse.Namespace,
        meta: dict[str, Any],
        sizes: Sizes,
        servers: Servers,
        peer_url: str,
        log_dir: Path,
    ) -> None:
        self.args = args
        self.meta = meta
        self.sizes = sizes
        self.servers = servers
        self.peer_url = peer_url
        self.log_dir = log_dir
        self.results: dict[str, dict[str, Any]] = {}
        self.profiler = Profiler(args.out) if args.profile else None
        self.ours = OurBench(servers, log_dir, self.profiler)
        self.loop = asyncio.new_event_loop()
        self.peers: dict[str, PeerBench] = {}

    def peer(self, name: str) -> PeerBench:
        if name not in self.peers:
            if name in PEER_PG_DATABASE:
                url = f"{self.servers.database_url.rsplit('/', 1)[0]}/{PEER_PG_DATABASE[name]}"
            else:
                url = f"{self.peer_url}/{PEER_DB[name]}"
            self.peers[name] = PeerBench(load_peer(name, url), self.servers.stamps_url, self.log_dir)
        return self.peers[name]

    def record(self, scenario: str, system: str, run: Callable[[], dict[str, Any]]) -> None:
        started = time.monotonic()
        print(f"-- {scenario} / {system} ...", flush=True)
        try:
            figures = run()
        except Exception as exc:
            traceback.print_exc()
            figures = {"error": f"{type(exc).__name__}: {exc}"}
        figures["took_s"] = round(time.monotonic() - started, 1)
        self.results.setdefault(scenario, {})[system] = figures
        print(f"   {json.dumps(figures)}", flush=True)
        self.save()

    def save(self) -> None:
        (self.args.out / "results.json").write_text(json.dumps(self.document(), indent=2))

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"meta": self.meta, "results": self.results}
        if self.profiler is not None:
            doc["profile"] = self.profiler.summaries
        return doc

    def run(self, scenarios: set[str], systems: set[str]) -> None:
        order = [name for name in SYSTEMS if name in systems]
        for scenario in [x for x in SCENARIOS if x in scenarios]:
            for system in order:
                if system == "ours":
                    self._ours(scenario)
                elif scenario != "watch":
                    self._peer(scenario, system)

    def _ours(self, scenario: str) -> None:
        s, ours, run = self.sizes, self.ours, self.loop.run_until_complete
        if scenario == "throughput":
            self.record(scenario, "ours", lambda: run(ours.throughput(s.noops, s.single_calls, 2, 10)))
        elif scenario == "latency":
            self.record(scenario, "ours", lambda: run(ours.latency(s.latency_tasks, s.latency_warmup, 2, 10)))
        elif scenario == "sleep":
            self.record(scenario, "ours", lambda: run(ours.parallel_sleep(s.sleeps, 1.0, 2, 50)))
        elif scenario == "cancel":
            self.record(scenario, "ours", lambda: run(ours.cancel(s.cancels, 2, 10)))
        elif scenario == "crash":
            self.record(scenario, "ours", lambda: self._our_crash())
        elif scenario == "watch":
            self.record(scenario, "ours", lambda: run(self._our_watch()))

    def _our_crash(self) -> dict[str, Any]:
        s, run = self.sizes, self.loop.run_until_complete
        return {
            "defaults": run(self.ours.crash(s.crash_give_up_s, 2, 10)),
            "healthy_defaults": run(self.ours.healthy_long_task(s.healthy_task_s, 5, 2, 10)),
        }

    async def _our_watch(self) -> dict[str, Any]:
        from bench.memory import MemorySampler
        from bench.ours import service_pids
        from bench.watch_latency import push_latency, signup_users, submit_batch_latency

        s = self.sizes
        with self.ours.stack(2, 10) as stack:
            sampler = MemorySampler(service_pids(stack))
            at_rest = sampler.sample()
            async with self.ours.client(stack) as client:
                assert client.token is not None
                users = await signup_users(stack.edge_address, WATCH_USERS)
                with sampler.running():
                    # Dashboards of many users, and the worst case: every watcher on one user's events.
                    # A body without progress reports: each task makes 3 events (queued, running, succeeded).
                    kind, payload = "bench.stamp", {"label": f"watch-{uuid.uuid4().hex[:8]}"}
                    edge = stack.edge_address
                    push = await push_latency(edge, users, kind, payload, s.watchers, s.watch_events, 0.25)
                    one = await push_latency(edge, users[:1], kind, payload, s.watchers, s.watch_events, 0.25)
                    batch = await submit_batch_latency(client, "sleep", s.batch_submits)
                push["one_user"] = {k: one[k] for k in ("push_ms", "deliveries", "missing", "event_messages_per_s")}
        # Under load: the peak of the throughput scenario when it ran, else of this one.
        loaded = self.ours.memory.get("under_load") or sampler.peak
        memory = {"rss_mib_at_rest": per_role(at_rest), "rss_mib_under_load": per_role(loaded)}
        return {**push, **batch, **memory}

    def _peer(self, scenario: str, name: str) -> None:
        s = self.sizes
        if scenario == "throughput":
            n = s.rq_noops if name == "rq" else s.noops
            self.record(scenario, name, lambda: self.peer(name).throughput(n, s.single_calls, WorkerPlan(2, 10)))
        elif scenario == "latency":
            plan = WorkerPlan(2, 10)
            self.record(scenario, name, lambda: self.peer(name).latency(s.latency_tasks, s.latency_warmup, plan))
        elif scenario == "sleep":
            plan = WorkerPlan(2, s.sleeps // 2, long_tasks=True, pool=name == "rq")
            self.record(scenario, name, lambda: self.peer(name).parallel_sleep(s.sleeps, 1.0, plan))
        elif scenario == "cancel":
            self.record(scenario, name, lambda: self.peer(name).cancel(s.cancels, WorkerPlan(2, 10)))
        elif scenario == "crash":
            self.record(scenario, name, lambda: self._peer_crash(name))

    def _peer_crash(self, name: str) -> dict[str, Any]:
        s, bench = self.sizes, self.peer(name)
        return {
            "defaults": bench.crash(WorkerPlan(2, 10), s.crash_give_up_s),
            "tuned": bench.crash(WorkerPlan(2, 10, tuned=True), s.crash_give_up_s),
            "healthy_tuned": bench.healthy_long_task(WorkerPlan(2, 10, tuned=True), s.healthy_task_s, 5),
        }

    def close(self) -> None:
        self.loop.run_until_complete(self.ours.close())
        self.loop.close()
        for bench in self.peers.values():
            bench.peer.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer tasks and rounds: minutes, not half an hour")
    parser.add_argument("--only", default="", help=f"comma list of scenarios {SCENARIOS} and/or systems {SYSTEMS}")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--profile", action="store_true", help="py-spy our services in throughput and latency")
    parser.add_argument("--doc", type=Path, help="also write the report page here (docs/benchmarks.md)")
    parser.add_argument("--note", default="", help="a remark printed with the run (e.g. what else ran meanwhile)")
    args = parser.parse_args()
    try:
        scenarios, systems = parse_only(args.only)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    args.out.mkdir(parents=True, exist_ok=True)
    sizes = QUICK if args.quick else FULL
    command = "make bench-quick" if args.quick else "make bench"
    if args.only or args.profile:
        command = "python -m bench.run " + " ".join(sys.argv[1:])
    meta = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": source_version(),
        "command": command,
        "quick": args.quick,
        "profiled": args.profile,
        "note": args.note,
        "machine": machine(),
        "sizes": sizes.__dict__,
    }
    print(f"bench: {meta['date']}, load average {meta['machine']['load_avg_at_start']}", flush=True)
    data_dir = Path(tempfile.mkdtemp(prefix="rtask-bench-"))
    log_dir = args.out / "logs"
    if log_dir.exists():
        shutil.rmtree(log_dir)
    try:
        with stores(data_dir, log_dir) as (database_url, redis_url):
            servers = Servers(database_url, f"{redis_url}/0", f"{redis_url}/{STAMPS_DB}", data_dir)
            runner = Runner(args, meta, sizes, servers, redis_url, log_dir)
            try:
                runner.run(scenarios, systems)
            finally:
                runner.close()
                runner.save()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    meta["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    document = runner.document()
    report.write(document, args.out, doc=args.doc)
    print((args.out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
