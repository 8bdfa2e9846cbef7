"""What handlers log, captured by the worker against real child processes: each stream line by line, cut to
4 KiB, and bounded by the rate limits with every line over them counted."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

import services.worker.builtin  # noqa: F401  (registers sleep)
from resilienttask.handlers import Handler, TaskContext, get_handler, task
from resilienttask.v1 import scheduler_pb2
from resilienttask.worker.v1 import worker_pb2
from services.worker.execution import ChildProcessExecution, TaskSpec
from services.worker.logs import LogShipConfig, LogShipper
from services.worker.runner import Attempt

FLOOD_LINES = 20_000


@task("test-logs-streams")
def streams(ctx: TaskContext) -> None:
    print("to stdout")
    print("to stderr", file=sys.stderr)
    print("x" * 5000)
    ctx.log.debug("logger %s", "debug")
    try:
        raise ValueError("boom")
    except ValueError:
        ctx.log.exception("it failed")
    print("no newline at the end", end="")


@task("test-logs-print-flood")
def print_flood(ctx: TaskContext) -> None:
    for i in range(FLOOD_LINES):
        print(f"line {i}")


@task("test-logs-logger-flood")
def logger_flood(ctx: TaskContext) -> None:
    for i in range(FLOOD_LINES):
        ctx.log.info("record %d", i)


async def run(kind: str, config: LogShipConfig) -> worker_pb2.TaskLogs:
    """Run the handler as the worker does; everything it logged, as the next message to the scheduler."""
    sent: list[worker_pb2.ConnectRequest] = []

    async def send(message: worker_pb2.ConnectRequest) -> bool:
        sent.append(message)
        return True

    shipper = LogShipper(send, config)
    handler = get_handler(kind)
    assert isinstance(handler, Handler)
    spec = TaskSpec(task_id=f"task-{kind}", kind=kind, attempt=2, payload={}, workload_s=0.05, max_runtime_s=0)
    key = (spec.task_id, 7)
    attempt = Attempt(
        handler,
        spec,
        on_progress=lambda _: None,
        cancel_grace_s=1,
        log=shipper.open(key),
        log_rate=(config.task_lines_per_s, config.task_burst_lines),
    )
    outcome = await asyncio.wait_for(attempt.run(), 60)
    assert outcome.outcome == worker_pb2.OUTCOME_SUCCEEDED, outcome.error
    shipper.close(key)
    await shipper.flush()
    assert len(sent) == 1 and shipper.take() is None, "one message, and nothing left behind"
    (batch,) = sent[0].logs.batches
    assert batch.task.task_id == spec.task_id and batch.task.fence == 7
    return sent[0].logs


def accounted(logs: worker_pb2.TaskLogs) -> int:
    (batch,) = logs.batches
    return sum(line.dropped_before + 1 for line in batch.lines) + batch.dropped_after


async def test_each_stream_of_a_child_is_captured_line_by_line() -> None:
    (batch,) = (await run("test-logs-streams", LogShipConfig())).batches
    by_stream: dict[int, list[Any]] = {}
    for line in batch.lines:
        by_stream.setdefault(line.stream, []).append(line)
        assert line.at.seconds > 0 and line.dropped_before == 0
    stdout = [line.text for line in by_stream[scheduler_pb2.LOG_STREAM_STDOUT]]
    assert stdout == ["to stdout", "x" * 4096, "no newline at the end"]
    assert [line.text for line in by_stream[scheduler_pb2.LOG_STREAM_STDERR]] == ["to stderr"]
    logger = by_stream[scheduler_pb2.LOG_STREAM_LOGGER]
    assert [(line.level, line.text.splitlines()[0]) for line in logger] == [
        ("DEBUG", "logger debug"),
        ("ERROR", "it failed"),
    ]
    assert "ValueError: boom" in logger[1].text, "exc_info adds the traceback"
    assert all(line.level == "" for line in batch.lines if line.stream != scheduler_pb2.LOG_STREAM_LOGGER)


async def test_a_print_flood_is_bounded_and_every_line_is_counted() -> None:
    config = LogShipConfig(task_lines_per_s=1, task_burst_lines=100)
    logs = await run("test-logs-print-flood", config)
    (batch,) = logs.batches
    assert 100 <= len(batch.lines) <= 110
    assert accounted(logs) == FLOOD_LINES
    assert batch.lines[0].text == "line 0" and batch.lines[99].text == "line 99"


async def test_a_logger_flood_is_bounded_in_the_child_and_counted() -> None:
    config = LogShipConfig(task_lines_per_s=1, task_burst_lines=50)
    logs = await run("test-logs-logger-flood", config)
    (batch,) = logs.batches
    assert 50 <= len(batch.lines) <= 60 and accounted(logs) == FLOOD_LINES


async def test_the_worker_bound_applies_across_attempts() -> None:
    sent: list[worker_pb2.ConnectRequest] = []

    async def send(message: worker_pb2.ConnectRequest) -> bool:
        sent.append(message)
        return True

    shipper = LogShipper(send, LogShipConfig(worker_lines_per_s=1, worker_burst_lines=30))
    first, second = shipper.open(("a", 1)), shipper.open(("b", 1))
    for i in range(25):
        first.line(scheduler_pb2.LOG_STREAM_LOGGER, "INFO", f"a{i}")
        second.line(scheduler_pb2.LOG_STREAM_LOGGER, "INFO", f"b{i}")
    message = shipper.take()
    assert message is not None
    kept = {batch.task.task_id: len(batch.lines) for batch in message.logs.batches}
    assert 30 <= sum(kept.values()) <= 31 and min(kept.values()) >= 14, "interleaved lines share the bucket"
    assert sum(accounted(worker_pb2.TaskLogs(batches=[b])) for b in message.logs.batches) == 50


async def test_the_builtin_sleep_logs_a_few_lines(caplog: Any) -> None:
    caplog.set_level(logging.INFO)
    (batch,) = (await run("sleep", LogShipConfig())).batches
    texts = [line.text for line in batch.lines]
    assert texts[0] == "attempt 2: working for 0.05s" and texts[-1].startswith("done after")
    assert len(texts) <= 6


async def test_lines_split_across_reads_are_joined_and_long_ones_cut_once() -> None:
    sent: list[worker_pb2.ConnectRequest] = []

    async def send(message: worker_pb2.ConnectRequest) -> bool:
        sent.append(message)
        return True

    shipper = LogShipper(send, LogShipConfig())
    handler = get_handler("test-logs-streams")
    assert isinstance(handler, Handler)
    spec = TaskSpec(task_id="t", kind="test-logs-streams", attempt=1, payload={}, workload_s=0, max_runtime_s=0)
    execution = ChildProcessExecution(handler, spec, lambda _: None, log=shipper.open(("t", 1)))
    reader = asyncio.StreamReader()
    for chunk in (b"to std", b"out\n" + b"x" * 4000, b"x" * 1000, b"x" * 9000, b"xx\nnext\n\nno newline"):
        reader.feed_data(chunk)
    reader.feed_eof()
    await execution._pump(reader, scheduler_pb2.LOG_STREAM_STDOUT)
    message = shipper.take()
    assert message is not None
    (batch,) = message.logs.batches
    assert [line.text for line in batch.lines] == ["to stdout", "x" * 4096, "next", "", "no newline"]
