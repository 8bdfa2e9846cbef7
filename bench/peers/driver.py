"""The scenarios, run the same way against every peer: worker nodes started and stopped per scenario.

Definitions (the same for ours, in bench/ours.py):
- throughput: N no-op tasks (each INCRs a counter); enqueue rate = N / time spent enqueueing; drain rate =
  N / (first enqueue → counter observed at N, polled every 10 ms).
- latency: sequential single tasks on idle workers; start = the body's timestamp - the wall time just before
  the enqueue call; seen = when the client's result API returned.
- parallel sleep: N tasks of 1 s on N slots; wall = first enqueue → last body end.
- cancel: a running 30 s task; stopped = the body's own stamp when it unwinds (finally), or the moment its
  process was seen gone (Celery and RQ kill it); seen = the client's result/status API shows it stopped.
- crash: SIGKILL of the node running a 20 s task 2 s after it started (a fresh node is started at once);
  rerun = the next start of the body - the kill.
"""

from __future__ import annotations

import importlib
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import psutil

from bench.figures import process_gone, spread_ms, wait_for
from bench.peers.base import PEER_URL_ENV, Peer, WorkerPlan
from bench.stamps import STAMPS_URL_ENV, StampReader
from services.stack.processes import ManagedProcess

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 60
DRAIN_TIMEOUT_S = 300
STOP_POLL_S = 0.0005
# Cancel scenario: thread bodies sleep in 1 ms steps, so an exception raised in their thread can land;
# the cancel comes 1.5 s after the start (dramatiq-abort only watches for a new message every second).
RUNNING_BEFORE_CANCEL_S = 1.5
CANCEL_STEP_S = 0.001
# Crash scenario: the kill comes this long after the body started.
KILL_AFTER_S = 2.0


def load_peer(name: str, url: str) -> Peer:
    """Import a peer's module with its store's URL (Redis or PostgreSQL) in the environment (its app reads it
    when imported)."""
    os.environ[PEER_URL_ENV] = url
    module = importlib.import_module(f"bench.peers.{name}")
    peer: Peer = module.PEER(url)
    return peer


class Nodes:
    """The worker nodes of one peer for one scenario, each in its own process group."""

    def __init__(self, peer: Peer, plan: WorkerPlan, stamps_url: str, log_dir: Path) -> None:
        self.peer = peer
        self.plan = plan
        self.log_dir = log_dir
        self.env = {
            **os.environ,
            **peer.worker_env(plan),
            STAMPS_URL_ENV: stamps_url,
            "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1",
        }
        self.procs: list[ManagedProcess] = []
        self._started = 0

    def start(self) -> None:
        for argv in self.peer.worker_argvs(self.plan):
            self._start_one(argv)
        # An RQ pool registers each of its work horses' workers; everyone else registers one per node.
        expected = self.plan.processes * self.plan.concurrency if self.plan.pool else len(self.procs)
        if wait_for(lambda: True if self.peer.ready_workers() >= expected else None, READY_TIMEOUT_S, 0.05) is None:
            raise TimeoutError(f"{self.peer.name}: {self.peer.ready_workers()} of {expected} workers ready")

    def _start_one(self, argv: list[str]) -> ManagedProcess:
        self._started += 1
        proc = ManagedProcess(f"{self.peer.name}-{self._started}", argv, log_dir=self.log_dir, env=self.env, cwd=REPO)
        proc.start()
        self.procs.append(proc)
        return proc

    def node_of(self, pid: int) -> ManagedProcess:
        """The node whose process tree holds pid (RQ's work horse leaves the node's process group)."""
        for proc in self.procs:
            if not proc.alive():
                continue
            try:
                tree = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
            except psutil.Error:
                continue
            if pid in tree:
                return proc
        raise LookupError(f"no live node runs pid {pid}")

    def kill_node(self, proc: ManagedProcess) -> None:
        """SIGKILL a whole node at once: its group and any descendant that left the group."""
        strays = _descendants(proc.pid)
        proc.kill()
        for child in strays:
            try:
                child.kill()
            except psutil.Error:
                continue

    def replace(self, proc: ManagedProcess) -> None:
        """Start a fresh node with the killed one's command line (as a supervisor would)."""
        self._start_one(proc.argv)

    def stop(self) -> None:
        for proc in self.procs:
            strays = _descendants(proc.pid) if proc.alive() else []
            proc.stop(grace_s=5)
            for child in strays:
                try:
                    child.kill()
                except psutil.Error:
                    continue


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


class PeerBench:
    """Runs the scenarios for one peer."""

    def __init__(self, peer: Peer, stamps_url: str, log_dir: Path) -> None:
        self.peer = peer
        self.stamps_url = stamps_url
        self.stamps = StampReader(stamps_url)
        self.log_dir = log_dir

    @contextmanager
    def nodes(self, plan: WorkerPlan) -> Iterator[Nodes]:
        self.peer.reset()
        nodes = Nodes(self.peer, plan, self.stamps_url, self.log_dir)
        try:
            nodes.start()
            yield nodes
        finally:
            nodes.stop()

    def _label(self) -> str:
        return uuid.uuid4().hex[:12]

    # -- 1. throughput ---------------------------------------------------------------------------
    def throughput(self, n: int, single_calls: int, plan: WorkerPlan) -> dict[str, Any]:
        name = self.peer.name
        with self.nodes(plan):
            label = self._label()
            first = time.time()
            self.peer.enqueue_noops(label, n)
            enqueued = time.time()

            def drained() -> float | None:
                return time.time() if self.stamps.count(name, label) >= n else None

            done = wait_for(drained, DRAIN_TIMEOUT_S, 0.01)
            count = self.stamps.count(name, label)
            single = self._label()
            started = time.time()
            for _ in range(single_calls):
                self.peer.submit("noop", single)
            single_s = time.time() - started
            wait_for(lambda: True if self.stamps.count(name, single) >= single_calls else None, DRAIN_TIMEOUT_S)
        result: dict[str, Any] = {
            "n": n,
            "enqueue_method": self.peer.enqueue_method,
            "enqueue_per_s": round(n / (enqueued - first)),
            "single_call_enqueue_per_s": round(single_calls / single_s),
            "workers": f"{plan.processes} processes x {plan.concurrency}",
        }
        if done is None:
            result["drain_per_s"] = round(count / (time.time() - first))
            result["note"] = f"only {count} of {n} ran within {DRAIN_TIMEOUT_S}s"
        else:
            result["drain_per_s"] = round(n / (done - first))
            result["drain_wall_s"] = round(done - first, 2)
        return result

    # -- 2. latency ------------------------------------------------------------------------------
    def latency(self, n: int, warmup: int, plan: WorkerPlan) -> dict[str, Any]:
        name = self.peer.name
        to_start: list[float] = []
        to_seen: list[float] = []
        with self.nodes(plan):
            for i in range(warmup + n):
                label = self._label()
                before = time.time()
                handle = self.peer.submit("stamp", label)
                self.peer.wait_result(handle, 30)
                seen = time.time()
                starts = self.stamps.wait_starts(name, label, 1, 5)
                if i >= warmup and starts:
                    to_start.append(starts[0].at - before)
                    to_seen.append(seen - before)
        return {
            "n": len(to_start),
            "start_ms": spread_ms(to_start),
            "seen_ms": spread_ms(to_seen),
            "result_api": self.peer.result_api,
        }

    # -- 3. parallel sleep -----------------------------------------------------------------------
    def parallel_sleep(self, n: int, seconds: float, plan: WorkerPlan) -> dict[str, Any]:
        name = self.peer.name
        labels = [self._label() for _ in range(n)]
        with self.nodes(plan):
            first = time.time()
            for label in labels:
                self.peer.submit("sleep", label, seconds)

            def all_stopped() -> list[float] | None:
                stops = [self.stamps.stop(name, label) for label in labels]
                return None if None in stops else [s for s in stops if s is not None]

            stops = wait_for(all_stopped, seconds * 10 + 30, 0.01)
            starts = [s.at for label in labels for s in self.stamps.starts(name, label)[:1]]
        if stops is None:
            return {"n": n, "note": f"not all {n} finished within {seconds * 10 + 30}s"}
        return {
            "n": n,
            "slots": plan.processes * plan.concurrency,
            "wall_s": round(max(stops) - first, 2),
            "started_within_0_5_s": sum(1 for s in starts if s - first <= 0.5),
            "last_start_s": round(max(starts) - first, 2),
        }

    # -- 4. cancel -------------------------------------------------------------------------------
    def cancel(self, rounds: int, plan: WorkerPlan) -> dict[str, Any]:
        name = self.peer.name
        call_s: list[float] = []
        stopped_s: list[float] = []
        seen_s: list[float] = []
        missed = 0
        with self.nodes(plan):
            for _ in range(rounds):
                label = self._label()
                handle = self.peer.submit("sleep", label, 30, step_s=CANCEL_STEP_S)
                starts = self.stamps.wait_starts(name, label, 1, 30)
                if not starts:
                    raise TimeoutError(f"{name}: the 30 s task did not start")
                time.sleep(RUNNING_BEFORE_CANCEL_S)
                watcher = _DeathWatch(starts[0].pid)
                before = time.time()
                self.peer.cancel(handle)
                call_s.append(time.time() - before)
                self.peer.wait_cancelled(handle, 30)
                seen_s.append(time.time() - before)
                ended = wait_for(partial(self._ended, label, watcher), 5, 0.002)
                watcher.finish()
                ends = [t for t in (self.stamps.stop(name, label), watcher.gone_at) if t is not None]
                if ended and ends:
                    stopped_s.append(min(ends) - before)
                else:
                    missed += 1
        return {
            "rounds": rounds,
            "method": self.peer.cancel_method,
            "stopped_ms": spread_ms(stopped_s),
            "seen_ms": spread_ms(seen_s),
            "call_ms": spread_ms(call_s),
            "missed": missed,
        }

    def _ended(self, label: str, watcher: _DeathWatch) -> bool | None:
        """True once the body stamped its stop or its process is gone."""
        if watcher.gone_at is not None or self.stamps.stop(self.peer.name, label) is not None:
            return True
        return None

    # -- 5. crash --------------------------------------------------------------------------------
    def crash(self, plan: WorkerPlan, give_up_s: float) -> dict[str, Any]:
        """Kill the node running a 20 s task; when (if) does it run again?"""
        name = self.peer.name
        label = self._label()
        with self.nodes(plan) as nodes:
            self.peer.submit("sleep", label, 20, tuned=plan.tuned)
            starts = self.stamps.wait_starts(name, label, 1, 30)
            if not starts:
                raise TimeoutError(f"{name}: the 20 s task did not start")
            time.sleep(max(0.0, starts[0].at + KILL_AFTER_S - time.time()))
            victim = nodes.node_of(starts[0].pid)
            killed = time.time()
            nodes.kill_node(victim)
            nodes.replace(victim)
            again = self.stamps.wait_starts(name, label, 2, give_up_s, poll_s=0.05)
        if len(again) < 2:
            return {"rerun": False, "give_up_s": give_up_s}
        return {"rerun": True, "rerun_after_s": round(again[1].at - killed, 1)}

    def healthy_long_task(self, plan: WorkerPlan, seconds: float, settle_s: float) -> dict[str, Any]:
        """How often a healthy task longer than the redelivery threshold runs."""
        name = self.peer.name
        label = self._label()
        with self.nodes(plan):
            self.peer.submit("sleep", label, seconds, tuned=plan.tuned)
            if not self.stamps.wait_starts(name, label, 1, 30):
                raise TimeoutError(f"{name}: the long task did not start")
            time.sleep(seconds + settle_s)
            runs = len(self.stamps.starts(name, label))
        return {"seconds": seconds, "runs": runs}


class _DeathWatch:
    """Notes when a process disappears, polling from a thread (for peers that kill the body's process)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.gone_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if process_gone(self.pid):
                self.gone_at = time.time()
                return
            time.sleep(STOP_POLL_S)

    def finish(self) -> None:
        self._stop.set()
        self._thread.join()
