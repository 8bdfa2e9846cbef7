"""Handler attempts against real child processes: outcomes, progress, cancel, max_runtime and kills."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from typing import Any

import pytest

import services.worker.builtin  # noqa: F401  (registers sleep, fail, spin)
from resilienttask.handlers import Handler, TaskContext, get_handler, registered_kinds, task
from resilienttask.worker.v1 import worker_pb2
from services.worker.execution import TaskSpec
from services.worker.isolation import IsolationConfig
from services.worker.runner import MAX_ERROR_CHARS, Attempt, AttemptOutcome
from tests.helpers import eventually

GRACE_S = 0.2


# -- handlers used by these tests; module level, so child processes can import them ---------------
@task("test-sync-echo")
def sync_echo(ctx: TaskContext) -> dict[str, Any]:
    ctx.report_progress(0.5)
    return {"pid": os.getpid(), "payload": ctx.payload, "attempt": ctx.attempt, "task_id": ctx.task_id}


@task("test-sync-environment")
def sync_environment(ctx: TaskContext) -> dict[str, Any]:
    names = ("RTASK_JWT_SECRET", "DATABASE_URL", "REDIS_URL", "RTASK_WORKER_ENROLMENT_SECRET_FILE", "RTASK_VISIBLE")
    return {name: os.environ.get(name) for name in names}


@task("test-sync-cooperative")
def sync_cooperative(ctx: TaskContext) -> str:
    ctx.report_progress(0.1)
    while not ctx.wait_cancelled(60):
        pass
    return "stopped"


@task("test-sync-raises")
def sync_raises(ctx: TaskContext) -> None:
    raise ValueError("bad input: " + "x" * 5000)


@task("test-sync-exits")
def sync_exits(ctx: TaskContext) -> None:
    os._exit(3)


@task("test-sync-grandchild")
def sync_grandchild(ctx: TaskContext) -> None:
    # A plain program: the handler runs unprivileged, and the worker's interpreter may be readable by root only.
    child = subprocess.Popen(["sleep", "600"])
    print(f"GRANDCHILD {child.pid}", flush=True)
    ctx.report_progress(float(child.pid) / 1e9)  # carries the grandchild pid to the test
    while True:
        time.sleep(1)  # ignores cancellation


@task("test-async-in-child", process=True)
async def async_in_child(ctx: TaskContext) -> int:
    ctx.report_progress(0.2)
    await ctx.sleep_or_cancel(600)
    return os.getpid()


@task("test-async-not-json")
async def async_not_json(ctx: TaskContext) -> object:
    return {"when": object()}


swallowed = {"count": 0}


@task("test-async-swallows")
async def async_swallows(ctx: TaskContext) -> str:
    """Swallows the first cancellation (like the redis-py 8.1 asyncio bug), then stops on the next one."""
    ctx.report_progress(0.1)
    try:
        await asyncio.sleep(600)
    except asyncio.CancelledError:
        swallowed["count"] += 1
    await asyncio.sleep(600)
    return "unreachable"


# -- helpers -----------------------------------------------------------------------------------------
class Run:
    """An attempt running in the background, with the progress it reported."""

    def __init__(
        self,
        kind: str,
        *,
        workload_s: float = 0.0,
        max_runtime_s: float = 0.0,
        payload: Any = None,
        isolation: IsolationConfig | None = None,
    ):
        handler = get_handler(kind)
        assert isinstance(handler, Handler)
        self.progress: list[float] = []
        spec = TaskSpec(
            task_id=f"task-{kind}",
            kind=kind,
            attempt=1,
            payload=payload or {},
            workload_s=workload_s,
            max_runtime_s=max_runtime_s,
        )
        self.attempt = Attempt(
            handler, spec, on_progress=self.progress.append, cancel_grace_s=GRACE_S, isolation=isolation
        )
        self.task = asyncio.create_task(self.attempt.run())

    async def started(self) -> None:
        await eventually(lambda: _value(bool(self.progress)), message="first progress report")

    async def outcome(self) -> AttemptOutcome:
        return await asyncio.wait_for(self.task, timeout=60)


async def _value(value: Any) -> Any:
    return value


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# -- built-in kinds ------------------------------------------------------------------------------------
def test_builtin_kinds_are_registered() -> None:
    assert {"sleep", "fail", "spin"} <= set(registered_kinds())
    spin = get_handler("spin")
    assert spin is not None and spin.process and not spin.is_async


async def test_sleep_reports_progress_and_succeeds() -> None:
    run = Run("sleep", workload_s=0.3)
    result = await run.outcome()
    assert result.outcome == worker_pb2.OUTCOME_SUCCEEDED
    assert result.result == {"slept_s": 0.3}
    assert len(run.progress) > 2
    assert run.progress == sorted(run.progress)
    assert run.progress[-1] == 1.0


async def test_sleep_cancelled_stops_cooperatively() -> None:
    run = Run("sleep", workload_s=600)
    await run.started()
    run.attempt.cancel()
    result = await run.outcome()
    assert result.outcome == worker_pb2.OUTCOME_CANCELLED
    assert result.error.startswith("stopped cooperatively after ")
    assert not result.forced


async def test_sleep_past_max_runtime_times_out_cooperatively() -> None:
    run = Run("sleep", workload_s=600, max_runtime_s=0.2)
    result = await run.outcome()
    assert result.outcome == worker_pb2.OUTCOME_TIMED_OUT
    assert result.error.startswith("max_runtime of 0.2s exceeded; stopped cooperatively after ")


async def test_fail_fails_with_its_error() -> None:
    result = await Run("fail", workload_s=0.05).outcome()
    assert result.outcome == worker_pb2.OUTCOME_FAILED
    assert result.error == "RuntimeError: simulated failure of attempt 1"
    custom = await Run("fail", payload={"message": "disk full"}).outcome()
    assert custom.error == "RuntimeError: disk full"


async def test_spin_is_killed_at_max_runtime_and_its_process_is_gone() -> None:
    run = Run("spin", max_runtime_s=0.5)
    await eventually(lambda: _value(run.attempt.pid), message="child started")
    pid = run.attempt.pid
    assert pid is not None and pid != os.getpid()
    result = await run.outcome()
    assert result.outcome == worker_pb2.OUTCOME_TIMED_OUT
    assert result.error == "max_runtime of 0.5s exceeded; killed after 200 ms grace"
    assert result.forced
    assert process_gone(pid)


async def test_spin_cancelled_is_killed_after_the_grace() -> None:
    run = Run("spin", workload_s=600)
    await run.started()
    pid = run.attempt.pid
    assert pid is not None
    run.attempt.cancel()
    result = await run.outcome()
    assert result.outcome == worker_pb2.OUTCOME_CANCELLED
    assert result.error == "killed after 200 ms grace"
    assert process_gone(pid)


async def test_spin_with_a_workload_finishes() -> None:
    result = await Run("spin", workload_s=0.1).outcome()
    assert result.outcome == worker_pb2.OUTCOME_SUCCEEDED
    assert result.result["rounds"] > 0


# -- user handlers -------------------------------------------------------------------------------------
async def test_sync_handler_runs_in_a_child_process() -> None:
    run = Run("test-sync-echo", payload={"n": 3, "items": ["a", "b"]})
    result = await run.outcome()
    assert result.outcome == worker_pb2.OUTCOME_SUCCEEDED
    assert result.result["pid"] != os.getpid()
    assert result.result["payload"] == {"n": 3, "items": ["a", "b"]}
    assert result.result["task_id"] == "task-test-sync-echo"
    assert result.result["attempt"] == 1
    assert run.progress == [0.5]
    assert process_gone(result.result["pid"])


async def test_handler_processes_do_not_get_the_worker_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTASK_JWT_SECRET", "s" * 40)
    monkeypatch.setenv("DATABASE_URL", "postgresql://user:password@db/tasks")
    monkeypatch.setenv("REDIS_URL", "redis://:password@redis:6379/0")
    monkeypatch.setenv("RTASK_WORKER_ENROLMENT_SECRET_FILE", "/run/secrets/worker_enrolment_secret")
    monkeypatch.setenv("RTASK_VISIBLE", "yes")
    nothing = dict.fromkeys(
        ("RTASK_JWT_SECRET", "DATABASE_URL", "REDIS_URL", "RTASK_WORKER_ENROLMENT_SECRET_FILE", "RTASK_VISIBLE")
    )
    # An allow-list, not a deny-list: a variable reaches handlers only when the operator names it.
    assert (await Run("test-sync-environment").outcome()).result == nothing
    chosen = await Run("test-sync-environment", isolation=IsolationConfig(pass_env=("RTASK_VISIBLE",))).outcome()
    assert chosen.result == {**nothing, "RTASK_VISIBLE": "yes"}


async def test_sync_handler_stops_cooperatively_on_cancel() -> None:
    run = Run("test-sync-cooperative")
    await run.started()
    pid = run.attempt.pid
    run.attempt.cancel()
    result = await run.outcome()
    assert result.outcome == worker_pb2.OUTCOME_CANCELLED
    assert result.error.startswith("stopped cooperatively after ")
    assert pid is not None and process_gone(pid)


async def test_async_handler_in_a_child_process_is_cancelled_there() -> None:
    run = Run("test-async-in-child")
    await run.started()
    run.attempt.cancel()
    result = await run.outcome()
    assert result.outcome == worker_pb2.OUTCOME_CANCELLED
    assert result.error.startswith("stopped cooperatively after ")


async def test_exception_in_child_is_a_failure_with_truncated_text() -> None:
    result = await Run("test-sync-raises").outcome()
    assert result.outcome == worker_pb2.OUTCOME_FAILED
    assert result.error.startswith("ValueError: bad input: xxx")
    assert len(result.error) == MAX_ERROR_CHARS


async def test_child_that_dies_without_an_outcome_fails() -> None:
    result = await Run("test-sync-exits").outcome()
    assert result.outcome == worker_pb2.OUTCOME_FAILED
    assert result.error == "handler process exited with status 3 without an outcome"


async def test_kill_takes_down_processes_the_handler_started() -> None:
    run = Run("test-sync-grandchild")
    await run.started()
    grandchild = round(run.progress[0] * 1e9)
    assert not process_gone(grandchild)
    run.attempt.cancel()
    result = await run.outcome()
    assert result.error == "killed after 200 ms grace"
    # The grandchild was re-parented to init (or a subreaper), which reaps it soon after the kill.
    await eventually(lambda: _value(process_gone(grandchild) or _zombie(grandchild)), message="grandchild killed")


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


async def test_result_that_is_not_json_fails() -> None:
    result = await Run("test-async-not-json").outcome()
    assert result.outcome == worker_pb2.OUTCOME_FAILED
    assert result.error.startswith("result is not JSON-compatible")


async def test_async_handler_that_swallows_cancellation_is_abandoned_and_cancelled_again() -> None:
    before = swallowed["count"]
    run = Run("test-async-swallows")
    await run.started()
    run.attempt.cancel()
    result = await run.outcome()
    assert result.outcome == worker_pb2.OUTCOME_CANCELLED
    assert result.error.startswith("abandoned after 200 ms grace: the in-process handler ignored cancellation")
    assert result.forced
    assert swallowed["count"] == before + 1
    # The abandoned task is cancelled again in the background; this one gives in on the second cancel.
    await eventually(lambda: _value(run.attempt.execution.done.done()), message="abandoned handler ended")


# -- registry --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["", "has space", "x" * 65, "-leading-dash", 7])
def test_invalid_kinds_are_refused(kind: Any) -> None:
    with pytest.raises(ValueError, match="invalid task kind"):
        task(kind)


def test_a_kind_cannot_be_taken_by_another_function() -> None:
    async def other(ctx: TaskContext) -> None:
        return None

    with pytest.raises(ValueError, match="already registered"):
        task("sleep")(other)
