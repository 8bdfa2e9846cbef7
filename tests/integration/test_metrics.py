"""Prometheus metrics of the real processes: every /metrics endpoint scraped and parsed while tasks run, fail,
retry, are reclaimed and cancelled; the cluster gauges exported by one scheduler of two; off means no port.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from resilienttask.v1 import scheduler_pb2, scheduler_pb2_grpc, task_pb2
from resilienttask.worker.v1 import worker_pb2
from services.core import metrics
from services.core.transitions.finish import RetryPolicy, finish_batch
from services.stack.ports import free_port
from services.stack.processes import ManagedProcess
from services.stack.stack import Stack
from tests.conftest import Stores
from tests.helpers import eventually
from tests.integration.accounts import signup
from tests.integration.scrape import Scrape, listening_ports, scrape, scrape_now, scrape_role, total
from tests.integration.tasks import UserTasks

S = task_pb2
P = "resilienttask"


@pytest.fixture
async def user(edge: grpc.aio.Channel) -> UserTasks:
    return UserTasks(edge, await signup(edge, "metrics"))


async def _all(stack: Stack) -> dict[str, dict[str, Scrape]]:
    roles = ("gateway", "scheduler", "worker")
    found = await asyncio.gather(*(scrape_role(stack, role) for role in roles))
    return dict(zip(roles, found, strict=True))


def _delta(before: dict[str, Scrape], after: dict[str, Scrape], name: str, **labels: str) -> float:
    return total(after.values(), name, **labels) - total(before.values(), name, **labels)


async def test_counters_and_histograms_move_as_tasks_run_fail_retry_and_are_cancelled(
    user: UserTasks, stack: Stack, edge: grpc.aio.Channel
) -> None:
    before = await _all(stack)
    watch = scheduler_pb2_grpc.SchedulerServiceStub(edge).WatchTasks(
        scheduler_pb2.WatchTasksRequest(), metadata=user.account.metadata
    )
    await watch.read()  # the snapshot: the stream is open on one of the gateways
    opened = await scrape_role(stack, "gateway")
    assert (
        total(opened.values(), f"{P}_watch_streams_open")
        == total(before["gateway"].values(), f"{P}_watch_streams_open") + 1
    )

    quick = await user.submit(workload_s=0.05, replicas=3)
    (failing,) = await user.submit("fail", workload_s=0.05, max_attempts=2)
    (long,) = await user.submit(workload_s=600)
    await user.wait_for(long.id, [S.TASK_STATUS_RUNNING])
    await user.cancel(long.id)
    for task in [*quick, failing, long]:
        await user.wait_for(task.id)
    assert (await user.get(failing.id)).dead_lettered
    await watch.read()  # at least one event went out
    watch.cancel()

    # Unauthenticated, straight to a gateway (the edge would refuse it before), and a health check of the scheduler.
    async with grpc.aio.insecure_channel(stack.address("gateway-1")) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await scheduler_pb2_grpc.SchedulerServiceStub(channel).GetTask(
                scheduler_pb2.GetTaskRequest(task_id=long.id)
            )
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    async with grpc.aio.insecure_channel(stack.address("scheduler-1")) as channel:
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())

    async def settled() -> dict[str, dict[str, Scrape]] | None:
        now = await _all(stack)
        ended = _delta(before["gateway"], now["gateway"], f"{P}_grpc_server_handled_total", method="WatchTasks")
        closed = total(now["gateway"].values(), f"{P}_watch_streams_open") == total(
            before["gateway"].values(), f"{P}_watch_streams_open"
        )
        reported = _delta(before["worker"], now["worker"], f"{P}_worker_reports_total")
        return now if ended == 1 and closed and reported == 6 else None

    after = await eventually(settled, message="the watch stream counted at its end, every outcome reported")
    gw, sc, wk = ((before[r], after[r]) for r in ("gateway", "scheduler", "worker"))

    # The gateways: submissions, the cancel of a queued-or-running task is the scheduler's to count here.
    assert _delta(*gw, f"{P}_tasks_submitted_total", kind="sleep") == 4
    assert _delta(*gw, f"{P}_tasks_submitted_total", kind="fail") == 1
    assert _delta(*gw, f"{P}_grpc_server_handled_total", method="SubmitTask", code="OK") >= 3  # the edge may retry
    assert _delta(*gw, f"{P}_grpc_server_handled_total", method="GetTask", code="UNAUTHENTICATED") == 1
    assert _delta(*gw, f"{P}_grpc_server_handled_total", method="WatchTasks", code="CANCELLED") == 1
    assert _delta(*gw, f"{P}_grpc_server_handling_seconds_count", method="SubmitTask") >= 3
    assert _delta(*gw, f"{P}_watch_events_delivered_total") >= 1

    # The scheduler: starts, ends, retries and dead letters, durations.
    assert _delta(*sc, f"{P}_tasks_started_total", kind="sleep") == 4
    assert _delta(*sc, f"{P}_tasks_started_total", kind="fail") == 2
    assert _delta(*sc, f"{P}_tasks_finished_total", kind="sleep", outcome="succeeded") == 3
    assert _delta(*sc, f"{P}_tasks_finished_total", kind="sleep", outcome="cancelled") == 1
    assert _delta(*sc, f"{P}_tasks_finished_total", kind="fail", outcome="failed") == 1
    assert _delta(*sc, f"{P}_task_retries_total", kind="fail") == 1
    assert _delta(*sc, f"{P}_tasks_dead_lettered_total", kind="fail") == 1
    assert _delta(*sc, f"{P}_task_queue_wait_seconds_count", kind="sleep") == 4
    assert _delta(*sc, f"{P}_task_queue_wait_seconds_count", kind="fail") == 1  # first attempts only
    assert _delta(*sc, f"{P}_task_run_seconds_count", kind="sleep", outcome="succeeded") == 3
    assert _delta(*sc, f"{P}_task_run_seconds_count", kind="fail", outcome="failed") == 2  # both attempts
    assert _delta(*sc, f"{P}_task_run_seconds_sum", kind="sleep", outcome="succeeded") >= 3 * 0.05
    assert _delta(*sc, f"{P}_grpc_server_handled_total", service="grpc.health.v1.Health", code="OK") >= 1

    # The workers: handler durations and the outcomes they reported.
    assert _delta(*wk, f"{P}_worker_handler_seconds_count", kind="sleep", outcome="succeeded") == 3
    assert _delta(*wk, f"{P}_worker_handler_seconds_count", kind="sleep", outcome="cancelled") == 1
    assert _delta(*wk, f"{P}_worker_handler_seconds_count", kind="fail", outcome="failed") == 2
    assert _delta(*wk, f"{P}_worker_reports_total", kind="fail", outcome="failed") == 2

    # Pools and slots, read at scrape time in each process.
    scheduler = after["scheduler"]["scheduler-1"]
    assert scheduler.value(f"{P}_db_pool_connections", state="max") == 10
    assert (
        scheduler.value(f"{P}_db_pool_connections", state="in_use")
        + scheduler.value(f"{P}_db_pool_connections", state="idle")
        >= 1
    )
    assert scheduler.value(f"{P}_redis_pool_connections", state="max") == 64
    for worker in after["worker"].values():
        assert worker.value(f"{P}_worker_slots_max") == stack.config.worker_slots
        assert worker.has(f"{P}_worker_slots_busy") and worker.has(f"{P}_redis_pool_connections")
        assert not worker.has(f"{P}_db_pool_connections"), "workers hold no PostgreSQL pool"


async def test_a_killed_workers_task_is_counted_as_reclaimed(user: UserTasks, stack: Stack) -> None:
    before = await scrape_role(stack, "scheduler")
    (task,) = await user.submit(workload_s=600)
    running = await user.wait_for(task.id, [S.TASK_STATUS_RUNNING])
    name = "-".join(running.worker_id.split("-")[:2])
    stack.processes[name].kill()
    try:

        async def reclaimed() -> bool:
            current = await user.get(task.id)
            return current.attempt >= 2 and current.status == S.TASK_STATUS_RUNNING

        await eventually(reclaimed, timeout_s=60, message="a new attempt on another worker")
    finally:
        stack.restart(name)
        await user.cancel(task.id)
    after = await scrape_role(stack, "scheduler")
    assert _delta(before, after, f"{P}_tasks_reclaimed_total", kind="sleep") == 1
    assert _delta(before, after, f"{P}_tasks_started_total", kind="sleep") == 2


async def test_a_stale_report_is_counted_as_fenced(user: UserTasks, stores: Stores) -> None:
    """In this process, on the real database: the transition counts the refusal it commits to."""
    (task,) = await user.submit(workload_s=600)
    await user.wait_for(task.id, [S.TASK_STATUS_RUNNING])
    measured = metrics.Metrics()
    metrics.install(measured)
    pool = await asyncpg.create_pool(stores.database_url, min_size=1, max_size=1)
    try:
        stale = worker_pb2.FinishItem(
            task=worker_pb2.HeldTask(task_id=task.id, fence=1), outcome=worker_pb2.OUTCOME_SUCCEEDED
        )
        outcome = await finish_batch(pool, "a-worker-that-lost-its-lease", [stale], RetryPolicy())
    finally:
        metrics.install(None)
        await pool.close()
        await user.cancel(task.id)
    assert not outcome.results[0].accepted
    assert measured.registry.get_sample_value(f"{P}_reports_fenced_total", {"kind": "sleep"}) == 1
    assert (
        measured.registry.get_sample_value(f"{P}_tasks_finished_total", {"kind": "sleep", "outcome": "succeeded"})
        is None
    )


@dataclass
class Replica:
    process: ManagedProcess
    metrics_url: str


@pytest.fixture
async def second_scheduler(stack: Stack) -> AsyncIterator[Replica]:
    """Another scheduler replica with metrics on, beside the stack's (no worker connects to it)."""
    port, metrics_port = free_port(), free_port()
    env = stack.service_env(port, role="scheduler")
    env.update({"RTASK_INSTANCE": "scheduler-extra", "RTASK_METRICS_PORT": str(metrics_port)})
    proc = ManagedProcess("scheduler-extra", stack.processes["scheduler-1"].argv, log_dir=stack.log_dir, env=env)
    replica = Replica(proc, f"http://127.0.0.1:{metrics_port}/metrics")
    proc.start()
    try:
        await eventually(lambda: _serving(replica.metrics_url), timeout_s=30, message="second scheduler's metrics")
        yield replica
    finally:
        proc.stop(grace_s=10)


async def _serving(url: str) -> bool:
    try:
        await scrape(url)
    except OSError:
        return False
    return True


async def test_queue_gauges_come_from_exactly_one_of_two_schedulers(
    user: UserTasks, stack: Stack, second_scheduler: Replica
) -> None:
    first = stack.metrics_url("scheduler-1")
    assert first is not None
    urls = {"scheduler-1": first, "scheduler-extra": second_scheduler.metrics_url}
    # More than the user's share of the slots: the rest wait, queued.
    tasks = await user.submit(workload_s=600, replicas=45)

    async def one_exports_the_backlog() -> dict[str, Scrape] | None:
        found = dict(zip(urls, await asyncio.gather(*(scrape(u) for u in urls.values())), strict=True))
        exporting = [n for n, s in found.items() if s.value(f"{P}_cluster_gauges_exporter") == 1]
        if len(exporting) != 1:
            return None
        source = found[exporting[0]]
        depth = source.value(f"{P}_queue_depth", kind="sleep")
        age = source.value(f"{P}_queue_oldest_age_seconds", kind="sleep")
        busy = source.value(f"{P}_worker_slots", state="busy")
        alive = source.value(f"{P}_workers_alive") == len(stack.names("worker"))
        return found if depth >= 20 and age > 0 and busy >= 10 and alive else None

    found: dict[str, Scrape] = await eventually(
        one_exports_the_backlog, message="one scheduler exports the queued backlog"
    )
    (exporter,) = (n for n, s in found.items() if s.value(f"{P}_cluster_gauges_exporter") == 1)
    (other,) = set(found) - {exporter}
    assert not found[other].has(f"{P}_queue_depth") and not found[other].has(f"{P}_workers_alive")
    assert (
        found[exporter].value(f"{P}_worker_slots", state="total")
        == len(stack.names("worker")) * stack.config.worker_slots
    )

    before = await scrape_role(stack, "gateway")
    await user.cancel_batch(tasks[0].batch_id)
    after = await scrape_role(stack, "gateway")
    queued_cancels = _delta(before, after, f"{P}_tasks_finished_total", kind="sleep", outcome="cancelled")
    assert queued_cancels >= 20, "tasks cancelled while queued are counted by the gateway that cancelled them"

    async def drained() -> bool:
        return (await scrape(urls[exporter])).value(f"{P}_queue_depth", kind="sleep") == 0

    await eventually(drained, message="queue depth back to 0 (the series stays, at 0)")

    # The second replica dies without a word: the stack's scheduler exports once the lease has lapsed.
    second_scheduler.process.signal(signal.SIGKILL)
    second_scheduler.process.wait(5)

    async def stack_scheduler_exports() -> bool:
        return (await scrape(urls["scheduler-1"])).value(f"{P}_cluster_gauges_exporter") == 1

    await eventually(stack_scheduler_exports, message="the remaining scheduler took the exporter lease")


async def test_metrics_off_opens_no_port_and_on_opens_one(stack: Stack) -> None:
    port = free_port()
    env = stack.service_env(port, role="gateway")
    env.pop("RTASK_METRICS_PORT", None)
    proc = ManagedProcess("gateway-nometrics", [*stack.processes["gateway-1"].argv], log_dir=stack.log_dir, env=env)
    proc.start()
    try:
        await eventually(lambda: _listening(proc.pid, port), timeout_s=30, message="gateway serving")
        assert listening_ports(proc.pid) == {port}
    finally:
        proc.stop(grace_s=10)
    assert "METRICS" not in proc.log_path.read_text()
    on = stack.processes["gateway-1"]
    metrics_port = stack.metrics_ports["gateway-1"]
    assert listening_ports(on.pid) == {stack.ports["gateway-1"], metrics_port}
    assert f"METRICS address=127.0.0.1:{metrics_port}" in on.log_path.read_text()


async def _listening(pid: int, port: int) -> bool:
    return port in listening_ports(pid)


@pytest.mark.timeout(120)
def test_make_up_prints_each_process_metrics_address_and_serves_it(tmp_path: Path) -> None:
    argv = [str(Path(sys.executable).parent / "rtask-stack"), "up", "--data-dir", str(tmp_path)]
    argv += ["--port", str(free_port()), "--tls-port", str(free_port()), "--admin-port", str(free_port())]
    argv += ["--gateways", "1", "--workers", "1"]
    env = {**os.environ, "RTASK_BCRYPT_COST": "4"}
    for name in ("DATABASE_URL", "REDIS_URL", "RTASK_METRICS_PORT", "RTASK_STACK_METRICS"):
        env.pop(name, None)
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    printed: dict[str, str] = {}
    try:
        for line in proc.stdout:
            if match := re.match(r"\s+metrics, (\S+):\s+(http://\S+/metrics)$", line):
                printed[match[1]] = match[2]
            if "Ctrl-C stops every process." in line:
                break
        else:
            raise AssertionError(f"launcher ended before it was up (code {proc.wait()})")
        threading.Thread(target=proc.stdout.read, daemon=True).start()  # never block the launcher on a pipe
        state = json.loads((tmp_path / "stack.json").read_text())
        assert set(printed) == {"scheduler-1", "gateway-1", "worker-1"}
        for name, url in printed.items():
            assert url == f"http://127.0.0.1:{state['processes'][name]['metrics_port']}/metrics"
            assert scrape_now(url).has(f"{P}_grpc_server_handled_total"), name
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
        proc.stdout.close()
