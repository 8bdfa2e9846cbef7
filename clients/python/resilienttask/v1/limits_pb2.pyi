from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor
LIMITS_FIELD_NUMBER: _ClassVar[int]
limits: _descriptor.FieldDescriptor

class FieldLimits(_message.Message):
    __slots__ = ("min_chars", "max_chars", "min_bytes", "max_bytes", "min_value", "max_value", "min_duration_ms", "max_duration_ms", "min_items", "max_items", "max_past_ms", "max_ahead_ms", "zero_means_default")
    MIN_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_CHARS_FIELD_NUMBER: _ClassVar[int]
    MIN_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    MIN_VALUE_FIELD_NUMBER: _ClassVar[int]
    MAX_VALUE_FIELD_NUMBER: _ClassVar[int]
    MIN_DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    MIN_ITEMS_FIELD_NUMBER: _ClassVar[int]
    MAX_ITEMS_FIELD_NUMBER: _ClassVar[int]
    MAX_PAST_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_AHEAD_MS_FIELD_NUMBER: _ClassVar[int]
    ZERO_MEANS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    min_chars: int
    max_chars: int
    min_bytes: int
    max_bytes: int
    min_value: int
    max_value: int
    min_duration_ms: int
    max_duration_ms: int
    min_items: int
    max_items: int
    max_past_ms: int
    max_ahead_ms: int
    zero_means_default: bool
    def __init__(self, min_chars: _Optional[int] = ..., max_chars: _Optional[int] = ..., min_bytes: _Optional[int] = ..., max_bytes: _Optional[int] = ..., min_value: _Optional[int] = ..., max_value: _Optional[int] = ..., min_duration_ms: _Optional[int] = ..., max_duration_ms: _Optional[int] = ..., min_items: _Optional[int] = ..., max_items: _Optional[int] = ..., max_past_ms: _Optional[int] = ..., max_ahead_ms: _Optional[int] = ..., zero_means_default: _Optional[bool] = ...) -> None: ...
