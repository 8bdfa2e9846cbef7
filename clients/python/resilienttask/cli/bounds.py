"""Option ranges from the contract's declared field limits (resilienttask.limits): the CLI refuses what the
service would, before a call, without a copy of the numbers."""

from __future__ import annotations

import click
from google.protobuf.message import Message

from resilienttask.limits import duration_text, field_limits


def int_range(message: type[Message], field: str) -> click.IntRange:
    """The values `field` of `message` accepts, as a click type (0 left out where it only means the default)."""
    limits = field_limits(message, field)
    return click.IntRange(limits.min_value, limits.max_value)


def range_text(message: type[Message], field: str) -> str:
    """The range as help text reads it: "1-50"."""
    limits = field_limits(message, field)
    return f"{limits.min_value}-{limits.max_value}"


def duration_range_text(message: type[Message], field: str) -> str:
    """A duration's range as help text reads it: "1s to 1h"."""
    limits = field_limits(message, field)
    return f"{duration_text(limits.min_duration_ms or 0)} to {duration_text(limits.max_duration_ms or 0)}"
