"""Live handler logs end to end through Envoy: a worker captures them (logger, stdout, stderr of the handler's
process), the scheduler stores them, WatchTaskLogs serves them live, the SDK and `rtask logs` read them.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

import resilienttask
from resilienttask import AsyncClient, Client, LogLine, TaskStatus
from resilienttask.v1 import scheduler_pb2, scheduler_pb2_grpc
from services.stack.stack import Stack
from tests.conftest import unique_email
from tests.integration.log_handler import BURST, GATED
from tests.integration.test_cli import COMMAND_TIMEOUT_S, Output, Rtask, anon, rtask

__all__ = ["anon", "rtask"]  # fixtures, used by name

PASSWORD = "correct horse battery"


@pytest.fixture
def gate() -> Iterator[Path]:
    """A file path the gated handler waits for; its folder is readable by the handler's unprivileged user."""
    folder = Path(tempfile.mkdtemp(prefix="rtask-gate-"))
    folder.chmod(0o755)
    try:
        yield folder / "open"
    finally:
        (folder / "open").unlink(missing_ok=True)
        folder.rmdir()


@pytest.fixture
async def aclient(stack: Stack) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(stack.edge_address) as sdk:
        await sdk.signup(unique_email("logs"), PASSWORD)
        yield sdk


async def test_a_running_tasks_logs_arrive_live_and_resume_misses_nothing(aclient: AsyncClient, gate: Path) -> None:
    (task,) = await aclient.submit("gated", kind=GATED, payload={"gate": str(gate)})
    seen: list[LogLine] = []
    lines = aclient.logs(task.id, follow=True)
    async for line in lines:
        seen.append(line)
        if {ln.stream for ln in seen} == {"stdout", "stderr", "logger"}:
            break
    # Every stream of the handler arrived while it still waits for the gate: live, not at the end.
    assert (await aclient.get(task.id)).status is TaskStatus.RUNNING
    texts = {ln.stream: ln.text for ln in seen}
    assert texts == {
        "stdout": "out-1 before the gate",
        "stderr": "err-1 before the gate",
        "logger": "logger-1 before the gate",
    }
    assert [ln.level for ln in seen if ln.stream == "logger"] == ["INFO"]
    await asyncio.to_thread(gate.touch)
    seen += [line async for line in lines]  # the same stream goes on, and ends once the task finished
    assert (await aclient.get(task.id)).status is TaskStatus.SUCCEEDED
    assert [ln.sequence for ln in seen] == list(range(1, len(seen) + 1)), "nothing dropped, nothing repeated"
    assert {ln.attempt for ln in seen} == {1} and all(ln.at is not None for ln in seen)
    assert [ln.text for ln in seen][-2:] in (
        ["out-2 after the gate", "logger-2 after the gate"],
        ["logger-2 after the gate", "out-2 after the gate"],
    )
    assert [ln.level for ln in seen if ln.text.startswith("logger-2")] == ["WARNING"]
    # Resuming after any line gives exactly the rest.
    for after in range(len(seen) + 1):
        rest = [line async for line in aclient.logs(task.id, after=after)]
        assert rest == seen[after:]


async def test_a_flood_is_bounded_and_every_missing_line_is_counted(stack: Stack, aclient: AsyncClient) -> None:
    printed = 3_000  # three times what one attempt may burst (RTASK_WORKER_LOG_TASK_BURST_LINES, 1,000)
    (task,) = await aclient.submit("flood", kind=BURST, payload={"lines": printed})
    (done,) = await aclient.wait([task], timeout=60)
    assert done.status is TaskStatus.SUCCEEDED
    async with grpc.aio.insecure_channel(stack.edge_address) as channel:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        request = scheduler_pb2.WatchTaskLogsRequest(task_id=task.id)
        metadata = (("authorization", f"Bearer {aclient.token}"),)
        messages = [m async for m in stub.WatchTaskLogs(request, metadata=metadata)]
    stored = [line for m in messages for line in m.lines]
    dropped = sum(m.dropped for m in messages)
    assert messages[-1].finished and not any(m.finished for m in messages[:-1])
    assert len(stored) + dropped == printed, "every line is either stored or counted as dropped"
    assert 0 < len(stored) < printed and dropped > 0
    assert [int(line.text.split()[1]) for line in stored] == sorted(int(line.text.split()[1]) for line in stored)
    assert all(line.stream == scheduler_pb2.LOG_STREAM_STDOUT for line in stored)


def test_other_users_tasks_logs_are_not_found(stack: Stack) -> None:
    with Client(stack.edge_address) as owner, Client(stack.edge_address) as other:
        owner.signup(unique_email("logs-owner"), PASSWORD)
        other.signup(unique_email("logs-other"), PASSWORD)
        (task,) = owner.submit("mine", workload=0.05)
        owner.wait([task], timeout=60)
        assert any("done after" in line.text for line in owner.logs(task.id)), "the built-in sleep logs"
        with pytest.raises(resilienttask.NotFound):
            list(other.logs(task.id))
        with pytest.raises(resilienttask.NotFound):
            list(other.logs(task.id, follow=True))
        with pytest.raises(resilienttask.InvalidArgument, match="task_id"):
            list(owner.logs("not-a-uuid"))
        with pytest.raises(resilienttask.InvalidArgument, match="after_sequence"):
            list(owner.logs(task.id, after=-1))


def test_rtask_logs_follow_prints_lines_as_they_come(rtask: Rtask, gate: Path) -> None:
    (task,) = rtask.json("submit", "gated", "--kind", GATED, "--payload", f'{{"gate": "{gate}"}}')
    with rtask.start("logs", "--follow", task["id"]) as proc:
        out = Output(proc.stdout)  # type: ignore[arg-type]
        first = {out.next_line() for _ in range(3)}
        assert any(" stdout  out-1 before the gate" in line for line in first), first
        assert any(" INFO    logger-1 before the gate" in line for line in first), first
        assert all(line.split()[1] == "#1" for line in first), first
        assert rtask.json("get", task["id"])["status"] == "running"
        gate.touch()
        assert proc.wait(COMMAND_TIMEOUT_S) == 0
    assert "out-2 after the gate" in out.text and "WARNING logger-2 after the gate" in out.text
    again = rtask.run("logs", task["id"]).stdout.splitlines()
    assert len(again) == 5 and again[-2:] == out.text.splitlines()[-2:]
