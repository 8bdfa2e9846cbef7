"""Hypothesis strategies for hostile requests: any protobuf request message, its fields filled with random,
huge, unicode and SQL-flavoured strings, extreme numbers and durations, and oversized payloads.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

SQL_METACHARACTERS = [
    "'; DROP TABLE tasks; --",
    "' OR '1'='1",
    '" OR ""="',
    "'); DELETE FROM users WHERE ('1'='1",
    "1; SELECT pg_sleep(30); --",
    "%' AND 1=1 --",
    "\\'; TRUNCATE task_history; --",
    "$1",
    "_%",
    "NULL",
    "E'\\x00'",
    "$$; DROP TABLE users; $$",
    "*/ UNION SELECT password_hash FROM users /*",
]

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
UINT32 = (0, 2**32 - 1)
UINT64 = (0, 2**64 - 1)
# Valid Duration seconds span about ±10,000 years; beyond it is still encodable, so it is sent too.
DURATION_SECONDS = 315_576_000_000


def hostile_text() -> st.SearchStrategy[str]:
    huge = st.builds(lambda ch, n: ch * n, st.characters(codec="utf-8"), st.integers(10_000, 1_500_000))
    return st.one_of(
        st.text(max_size=40),
        st.text(alphabet=st.characters(codec="utf-8", min_codepoint=0x80), max_size=40),
        st.sampled_from(SQL_METACHARACTERS),
        st.sampled_from(["", " ", "\x00", "a\x00b", "\u202e", "\ufeff", "\U0001f525" * 3, "../../etc/passwd"]),
        huge,
    )


def _bounded(low: int, high: int) -> st.SearchStrategy[int]:
    return st.one_of(st.integers(low, high), st.sampled_from([low, high, 0, -1 if low < 0 else 1]))


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return hostile_text()
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(width=64 if kind == FieldDescriptor.TYPE_DOUBLE else 32)
    if kind in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32):
        return _bounded(*INT32)
    if kind == FieldDescriptor.TYPE_ENUM:
        return _bounded(*INT32)  # open enums: unknown numbers are legal on the wire
    if kind in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64):
        return _bounded(*INT64)
    if kind in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return _bounded(*UINT32)
    if kind in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return _bounded(*UINT64)
    raise TypeError(f"no strategy for field type {kind} of {field.full_name}")


def _json_values() -> st.SearchStrategy[Any]:
    leaves = st.one_of(st.none(), st.booleans(), st.floats(), hostile_text())
    return st.recursive(
        leaves,
        lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
        max_leaves=10,
    )


def _struct(cls: type[Message]) -> st.SearchStrategy[Message]:
    def build(values: dict[str, Any]) -> Message:
        struct = cls()
        struct.update(values)  # type: ignore[attr-defined]
        return struct

    oversized = st.integers(60 * 1024, 2 * 1024 * 1024).map(lambda n: {"blob": "x" * n})
    return st.one_of(st.dictionaries(hostile_text(), _json_values(), max_size=5), oversized).map(build)


def _duration(cls: type[Message]) -> st.SearchStrategy[Message]:
    return st.builds(
        lambda seconds, nanos: cls(seconds=seconds, nanos=nanos),
        st.one_of(_bounded(-DURATION_SECONDS, DURATION_SECONDS), _bounded(*INT64)),
        st.one_of(st.integers(-999_999_999, 999_999_999), _bounded(*INT32)),
    )


def messages(cls: type[Message], depth: int = 0) -> st.SearchStrategy[Message]:
    """Any instance of the message class: each field unset or filled with something hostile."""
    descriptor: Descriptor = cls.DESCRIPTOR
    if descriptor.full_name == "google.protobuf.Struct":
        return _struct(cls)
    if descriptor.full_name == "google.protobuf.Duration":
        return _duration(cls)
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth >= 3:
                continue
            value: st.SearchStrategy[Any] = messages(message_factory.GetMessageClass(field.message_type), depth + 1)
        else:
            value = _scalar(field)
        if field.is_repeated:
            value = st.lists(value, max_size=4 if depth else 8)
        fields[field.name] = st.none() | value

    def build(values: dict[str, Any]) -> Message:
        message = cls()
        for name, value in values.items():
            if value is None:
                continue
            field = descriptor.fields_by_name[name]
            if field.is_repeated:
                getattr(message, name).extend(value)
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                getattr(message, name).CopyFrom(value)
            else:
                setattr(message, name, value)
        return message

    return st.fixed_dictionaries(fields).map(build)
