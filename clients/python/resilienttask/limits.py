"""The bounds of request fields, read from the contract's descriptors (proto/resilienttask/v1/limits.proto).

The proto declares each bound once, as a `(resilienttask.v1.limits)` field option; the gateway enforces what it
reads here and the CLI builds its option ranges from it, so no number is written twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from resilienttask.v1 import auth_pb2, limits_pb2, operator_pb2, schedule_pb2, scheduler_pb2

# The files of the public contract whose fields may carry limits.
_FILES = (auth_pb2, operator_pb2, schedule_pb2, scheduler_pb2)
# The generated stub types the extension as a plain FieldDescriptor; it is the FieldOptions extension.
_EXTENSION: Any = limits_pb2.limits


@dataclass(frozen=True)
class FieldLimits:
    """One field's declared bounds; None where the declaration sets none."""

    min_chars: int | None = None
    max_chars: int | None = None
    min_bytes: int | None = None
    max_bytes: int | None = None
    min_value: int | None = None
    max_value: int | None = None
    min_duration_ms: int | None = None
    max_duration_ms: int | None = None
    min_items: int | None = None
    max_items: int | None = None
    max_past_ms: int | None = None
    max_ahead_ms: int | None = None
    # The zero value (0, "") means "unset" and is accepted whatever the bounds.
    zero_means_default: bool = False


def _from_option(option: limits_pb2.FieldLimits) -> FieldLimits:
    bounds = {
        name: getattr(option, name) if option.HasField(name) else None
        for name in FieldLimits.__dataclass_fields__
        if name != "zero_means_default"
    }
    return FieldLimits(**bounds, zero_means_default=option.zero_means_default)


def field_limits(message: type[Message] | Descriptor, field: str) -> FieldLimits:
    """The limits declared on `field` of `message`; KeyError when it declares none."""
    descriptor = message if isinstance(message, Descriptor) else message.DESCRIPTOR
    return _declared()[(descriptor.full_name, field)]


def annotated() -> Iterator[tuple[Descriptor, FieldDescriptor, FieldLimits]]:
    """Every field of the public contract that declares limits, with them."""
    for module in _FILES:
        for message in _messages(module.DESCRIPTOR.message_types_by_name.values()):
            for field in message.fields:
                options = field.GetOptions()
                if options.HasExtension(_EXTENSION):
                    yield message, field, _from_option(options.Extensions[_EXTENSION])


def _messages(messages: object) -> Iterator[Descriptor]:
    for message in messages:  # type: ignore[attr-defined]
        yield message
        yield from _messages(message.nested_types)


@cache
def _declared() -> dict[tuple[str, str], FieldLimits]:
    return {(message.full_name, field.name): limits for message, field, limits in annotated()}


def duration_text(ms: int) -> str:
    """A bound as people read it: "1s", "24h", "366 days", "250 ms"."""
    day_ms, hour_ms, minute_ms = 86_400_000, 3_600_000, 60_000
    if ms > day_ms and ms % day_ms == 0:
        return f"{ms // day_ms} days"
    for unit_ms, unit in ((hour_ms, "h"), (minute_ms, "min"), (1000, "s")):
        if ms >= unit_ms and ms % unit_ms == 0:
            return f"{ms // unit_ms}{unit}"
    return f"{ms} ms"


def bytes_text(count: int) -> str:
    """A size bound as people read it: "64 KiB", "72 bytes"."""
    return f"{count // 1024} KiB" if count >= 1024 and count % 1024 == 0 else f"{count} bytes"
