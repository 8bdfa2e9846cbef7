"""Task summaries: what change events and watch snapshots carry.

A summary has every field a watcher draws (ids, status, progress, attempt, worker, version, times, an error
line) and none of the task's bulk: no payload (up to 64 KiB) and no result (as large as a handler returns).
Every string is cut to a byte bound, so a summary — and so every change event, in Redis and on the wire —
has a known maximum size (MAX_SUMMARY_BYTES) whatever a user, a worker or a handler put in the task.
Clients fetch payload and result with GetTask.
"""

from __future__ import annotations

from resilienttask.limits import field_limits
from resilienttask.v1 import scheduler_pb2, task_pb2

# Byte bounds (UTF-8) of the strings a summary keeps. Those of user input are the submission limits at four
# bytes a character, so they never cut a valid value; ids are UUIDs the services generate.
UUID_BYTES = 36
# The longest name and request_id SubmitTask accepts, at up to 4 bytes a character in UTF-8.
NAME_BYTES = 4 * (field_limits(scheduler_pb2.SubmitTaskRequest, "name").max_chars or 0)
REQUEST_ID_BYTES = 4 * (field_limits(scheduler_pb2.SubmitTaskRequest, "request_id").max_chars or 0)
KIND_BYTES = 256
WORKER_ID_BYTES = 256
# The error of a failed attempt can be a whole traceback: a summary keeps its first KiB (GetTask has it all).
ERROR_BYTES = 1024
CUT_MARK = "…"

# The largest serialized summary (field tags, length prefixes and the widest varints included); checked
# against a summary with every field at its widest by tests/unit/test_task_summary.py.
MAX_SUMMARY_BYTES = 3_200

# (field, byte bound, mark appended when cut) of every string a summary keeps.
_BOUNDS = (
    ("id", UUID_BYTES, ""),
    ("name", NAME_BYTES, ""),
    ("kind", KIND_BYTES, ""),
    ("worker_id", WORKER_ID_BYTES, ""),
    ("error", ERROR_BYTES, CUT_MARK),
    ("request_id", REQUEST_ID_BYTES, ""),
    ("batch_id", UUID_BYTES, ""),
    ("schedule_id", UUID_BYTES, ""),
)


def clip(text: str, limit_bytes: int, mark: str = "") -> str:
    """text cut to at most limit_bytes of UTF-8 at a character boundary, ending with `mark` when cut."""
    if len(text) <= limit_bytes and (len(text) * 4 <= limit_bytes or text.isascii()):
        return text  # short enough whatever its characters, or ASCII (one byte each): nothing to measure
    encoded = text.encode()
    if len(encoded) <= limit_bytes:
        return text
    room = limit_bytes - len(mark.encode())
    return encoded[:room].decode(errors="ignore") + mark


def summarize(task: task_pb2.Task) -> task_pb2.Task:
    """The summary of a task (the task itself when it is one already); the task is left as it is."""
    if task.summary:
        return task
    # A copy then two cleared fields: cheaper than building the message field by field (each keyword
    # argument costs about as much as copying a 64 KiB payload).
    summary = task_pb2.Task()
    summary.CopyFrom(task)
    return as_summary(summary)


def as_summary(task: task_pb2.Task) -> task_pb2.Task:
    """Make `task` a summary in place: payload and result cleared, strings cut to their bounds, marked."""
    if task.HasField("payload"):
        task.ClearField("payload")
    if task.HasField("result"):
        task.ClearField("result")
    for name, limit_bytes, mark in _BOUNDS:
        value = getattr(task, name)
        clipped = clip(value, limit_bytes, mark)
        if clipped is not value:  # set only what was cut
            setattr(task, name, clipped)
    task.summary = True
    return task
