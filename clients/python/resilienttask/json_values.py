"""JSON values through protobuf's Struct and Value, with their integers intact.

A Struct holds every number as a double, so a handler's `{"words": 11}` would come back as `11.0`. JSON has
one number type; what its users expect is that a whole number reads back as an int. Every place that turns
a Struct or Value into Python (the SDK, the worker handing a payload to a handler, the server storing a
payload or result) reads whole doubles within the exactly representable range (±2**53) as ints.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format, struct_pb2

# Beyond this a double no longer holds every integer, so a whole double there is not known to be one.
_EXACT_INTEGERS = 2**53


def with_integers(value: Any) -> Any:
    """The value with whole floats (within ±2**53) as ints, in nested dicts and lists too."""
    if isinstance(value, float):
        return int(value) if value.is_integer() and abs(value) <= _EXACT_INTEGERS else value
    if isinstance(value, dict):
        return {key: with_integers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [with_integers(item) for item in value]
    return value


def struct_to_dict(message: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as a dict of plain JSON values."""
    result: dict[str, Any] = with_integers(json_format.MessageToDict(message))
    return result


def value_to_python(message: struct_pb2.Value) -> Any:
    """A Value as a plain JSON value."""
    return with_integers(json_format.MessageToDict(message))
