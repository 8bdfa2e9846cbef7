"""WatchTasks messages as bytes: each change is encoded once per gateway, however many calls watch it.

A protobuf message's encoding is the concatenation of its fields' encodings, so what one watcher is sent is
joined from pieces encoded once per event: the whole single-event message, and the event as an element of a
batch. Only a batch's own two length prefixes are computed per watcher (its events differ between watchers
that fell in at different points).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from resilienttask.v1 import scheduler_pb2, task_pb2
from services.core.events import StoredEvent, StreamId
from services.gateway.watch import tokens

_RESPONSE_FIELDS = scheduler_pb2.WatchTasksResponse.DESCRIPTOR.fields_by_name
_RESUME_TOKEN = _RESPONSE_FIELDS["resume_token"].number
_EVENT = _RESPONSE_FIELDS["event"].number
_EVENTS = _RESPONSE_FIELDS["events"].number
_BATCH_EVENTS = scheduler_pb2.TaskEventBatch.DESCRIPTOR.fields_by_name["events"].number


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _length_delimited(number: int, payload: bytes) -> bytes:
    """One field of wire type 2 (bytes, string, message): tag, length, payload."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


@dataclass(frozen=True)
class EncodedEvent:
    """One change ready to send to any watcher of its owner: its history position and its encodings."""

    entry_id: str
    position: StreamId
    # A whole WatchTasksResponse carrying this event alone.
    alone: bytes
    # This event as one element of TaskEventBatch.events (tag and length included).
    in_batch: bytes
    # WatchTasksResponse.resume_token naming this event (tag and length included).
    token_field: bytes


def encode_event(event: StoredEvent, stats: task_pb2.TaskStats | None) -> EncodedEvent:
    token = tokens.encode(event.entry_id)
    message = scheduler_pb2.TaskEvent(
        task=event.change.task, stats=stats, deleted=event.change.deleted, resume_token=token
    )
    payload = message.SerializeToString()  # once: the single-event message and the batch element share it
    token_field = _length_delimited(_RESUME_TOKEN, token.encode())
    return EncodedEvent(
        entry_id=event.entry_id,
        position=event.position,
        alone=token_field + _length_delimited(_EVENT, payload),
        in_batch=_length_delimited(_BATCH_EVENTS, payload),
        token_field=token_field,
    )


def batch(events: Sequence[EncodedEvent]) -> bytes:
    """One WatchTasksResponse carrying `events` (oldest first): a TaskEventBatch, or the event alone if one."""
    if len(events) == 1:
        return events[0].alone
    return events[-1].token_field + _length_delimited(_EVENTS, b"".join(e.in_batch for e in events))
