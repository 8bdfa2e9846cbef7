"""The scheduler's side of log lines, driven by a real gRPC client acting as two workers: lines are kept only
from the attempt that holds the task (fenced like progress), and stored before the attempt's outcome."""

from __future__ import annotations

import uuid

import grpc

from resilienttask.v1 import scheduler_pb2
from resilienttask.worker.v1 import worker_pb2
from services.core import task_logs
from tests.helpers import eventually
from tests.integration.private_scheduler import Isolated, isolated, submit
from tests.integration.test_scheduler_fencing import finish, item, start
from tests.integration.test_worker_identity import RawStream

__all__ = ["isolated"]  # the fixture, used by name


def lines_of(task_id: str, fence: int, *texts: str) -> worker_pb2.ConnectRequest:
    batch = worker_pb2.TaskLogBatch(task=worker_pb2.HeldTask(task_id=task_id, fence=fence))
    for text in texts:
        batch.lines.add(stream=scheduler_pb2.LOG_STREAM_STDOUT, text=text).at.GetCurrentTime()
    return worker_pb2.ConnectRequest(logs=worker_pb2.TaskLogs(batches=[batch]))


async def test_a_superseded_attempts_lines_are_refused(isolated: Isolated) -> None:
    (row,) = await submit(isolated)
    task_id = str(row["id"])
    (first,) = await start(isolated, "worker-a", item(row))
    link_a = await isolated.link("worker-a")
    assert await link_a.send(lines_of(task_id, first.fence, "a: while holding"))
    assert await link_a.send(lines_of(task_id, first.fence + 1, "a: a fence never granted"))

    async def stored() -> list[scheduler_pb2.LogLine]:
        return await task_logs.read_after(isolated.redis, task_id, 0, 100)

    assert [line.text for line in await eventually(stored)] == ["a: while holding"]
    await isolated.drop("worker-a")

    async def taken_over() -> worker_pb2.StartResult | None:
        (result,) = await start(isolated, "worker-b", item(row))
        return result if result.decision == worker_pb2.START_DECISION_RUN else None

    second = await eventually(taken_over, message="worker-b takes the task over")
    link_a = await isolated.link("worker-a")  # the old holder, back with its stale fence
    assert await link_a.send(lines_of(task_id, first.fence, "a: superseded"))
    link_b = await isolated.link("worker-b")
    assert await link_b.send(lines_of(task_id, first.fence, "b: with a's fence"))
    assert await link_b.send(lines_of(task_id, second.fence, "b: last words"))
    # The outcome is recorded only after the lines sent before it are stored.
    assert (await finish(isolated, "worker-b", task_id, second.fence, worker_pb2.OUTCOME_SUCCEEDED)).accepted
    texts = [(line.text, line.attempt) for line in await stored()]
    assert texts == [("a: while holding", 1), ("b: last words", 2)]


async def test_a_stream_flooding_far_beyond_its_log_bound_is_ended(isolated: Isolated) -> None:
    # Ten times the stream's bound and burst (LogIntakeConfig: 2,000 lines/s, bursts of 10,000): one message.
    flood = RawStream(isolated, hello_id="log-flooder")
    batch = worker_pb2.TaskLogBatch(task=worker_pb2.HeldTask(task_id=str(uuid.uuid4()), fence=1))
    for _ in range(101_000):
        batch.lines.add(text="x")
    flood.send(logs=worker_pb2.TaskLogs(batches=[batch]))
    assert await flood.status() == grpc.StatusCode.RESOURCE_EXHAUSTED
    flood.close()
