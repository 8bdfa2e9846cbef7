"""The schedulers' command channel carries serialized SchedulerCommand messages, and nothing else is acted on."""

from __future__ import annotations

import json

import pytest

from services.core import commands


def test_a_stop_round_trips() -> None:
    command = commands.parse(commands.stop_message("worker-a", "task-1", 7, commands.SUPERSEDED))
    assert command is not None and command.WhichOneof("command") == "stop"
    assert (command.stop.worker_id, command.stop.task.task_id, command.stop.task.fence) == ("worker-a", "task-1", 7)
    assert command.stop.reason == commands.SUPERSEDED


def test_a_replaced_stream_round_trips() -> None:
    command = commands.parse(commands.replaced_message("worker-a", "stream-2"))
    assert command is not None and command.WhichOneof("command") == "replaced"
    assert (command.replaced.worker_id, command.replaced.stream_id) == ("worker-a", "stream-2")


@pytest.mark.parametrize(
    "data",
    [
        None,
        "a text message",
        b"",  # parses as an empty message: no command in it
        b"\xff\xff\xff",
        json.dumps({"worker_id": "w", "task_id": "t", "fence": 1, "reason": "cancelled"}).encode(),
    ],
)
def test_anything_else_is_no_command(data: object) -> None:
    assert commands.parse(data) is None
