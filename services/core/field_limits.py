"""Request fields checked against the limits the contract declares (resilienttask.limits reads them from the
descriptors once): every refusal is InvalidArgument naming the field, worded from the declared numbers.

The checks that are not simple bounds (a field required with another, a UUID, a cron expression, printable text)
stay with the code that needs them; this module only compares a value with its declaration.
"""

from __future__ import annotations

from collections.abc import Sized
from dataclasses import dataclass

from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

from resilienttask.limits import FieldLimits, bytes_text, duration_text, field_limits
from services.core.errors import InvalidArgument


@dataclass(frozen=True)
class Rule:
    """The declared limits of one field, and the checks of a value against them."""

    limits: FieldLimits

    def text(self, field: str, value: str) -> str:
        """A string within its character and byte bounds (an empty one is "required" when a minimum is set)."""
        lim = self.limits
        if not value and (lim.zero_means_default or not (lim.min_chars or lim.min_bytes)):
            return value
        if not value and lim.min_chars:
            raise InvalidArgument(field, "is required")
        if lim.max_chars is not None and len(value) > lim.max_chars:
            raise InvalidArgument(field, f"must be at most {lim.max_chars} characters")
        if lim.min_chars is not None and len(value) < lim.min_chars:
            raise InvalidArgument(field, f"must be at least {lim.min_chars} characters")
        if lim.min_bytes is not None or lim.max_bytes is not None:
            size = len(value.encode("utf-8", "surrogatepass"))
            if (lim.min_bytes is not None and size < lim.min_bytes) or (
                lim.max_bytes is not None and size > lim.max_bytes
            ):
                raise InvalidArgument(field, _range(lim.min_bytes, lim.max_bytes, "bytes long"))
        return value

    def number(self, field: str, value: int) -> int:
        """An integer within its bounds (0 too when it means the default)."""
        lim = self.limits
        if value == 0 and lim.zero_means_default:
            return value
        if (lim.min_value is not None and value < lim.min_value) or (
            lim.max_value is not None and value > lim.max_value
        ):
            if lim.min_value is not None and lim.max_value is not None:
                raise InvalidArgument(field, f"must be between {lim.min_value} and {lim.max_value}")
            if lim.max_value is not None:
                raise InvalidArgument(field, f"must be at most {lim.max_value}")
            raise InvalidArgument(field, f"must be at least {lim.min_value}")
        return value

    def duration(self, field: str, ms: int) -> int:
        """A duration (in whole milliseconds, not negative: see validation.duration_ms) within its bounds."""
        lim = self.limits
        low, high = lim.min_duration_ms, lim.max_duration_ms
        if (low is not None and ms < low) or (high is not None and ms > high):
            if low is not None and high is not None:
                raise InvalidArgument(field, f"must be between {duration_text(low)} and {duration_text(high)}")
            if high is not None:
                raise InvalidArgument(field, f"must be at most {duration_text(high)}")
            raise InvalidArgument(field, f"must be at least {duration_text(low or 0)}")
        return ms

    def size(self, field: str, message: Message) -> None:
        """A message no larger, encoded, than its bound."""
        high = self.limits.max_bytes
        if high is not None and message.ByteSize() > high:
            raise InvalidArgument(field, f"must be at most {bytes_text(high)}")

    def items(self, field: str, values: Sized, noun: str = "items") -> None:
        """A repeated field with as many items as its bounds allow."""
        lim = self.limits
        count = len(values)
        if (lim.min_items is not None and count < lim.min_items) or (
            lim.max_items is not None and count > lim.max_items
        ):
            raise InvalidArgument(
                field, f"must list {_range(lim.min_items, lim.max_items, noun).removeprefix('must be ')}"
            )


def rule(message: type[Message] | Descriptor, field: str) -> Rule:
    """The rule of a field that declares limits (KeyError at import for a field that declares none)."""
    return Rule(field_limits(message, field))


def _range(low: int | None, high: int | None, unit: str) -> str:
    if low is not None and high is not None:
        return f"must be {low} to {high} {unit}"
    if high is not None:
        return f"must be at most {high} {unit}"
    return f"must be at least {low} {unit}"
