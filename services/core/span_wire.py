"""OTLP bytes of task spans (services.core.task_spans), written directly in protobuf's wire format.

The export thread holds the GIL against the process's event loop while it encodes, and building protobuf
messages field by field (a Python call per field, a message per attribute) was most of what it did per task
span. A task span's fields are few and mostly known in advance (its name, the attribute keys, the kind and flags
bytes): this writes each span as one join of byte strings, prefixes cached by value, and the request's framing
(resource and scope) once per recorder. The request parses to the message services.core.span_encoding writes for
the same span as the SDK's finished span (tests/unit/test_span_encoding.py compares them). A span with an
attribute value this does not write (anything but str, bool, int and float) raises Unsupported: its batch is
then encoded from the SDK's finished spans.

Wire format: https://protobuf.dev/programming-guides/encoding/ (opentelemetry/proto/trace/v1/trace.proto for the
field numbers, taken from the generated messages below).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.util.types import AttributeValue

if TYPE_CHECKING:
    from services.core.task_spans import TaskEvent, TaskSpan

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_pack_fixed64 = struct.Struct("<Q").pack
_pack_double = struct.Struct("<d").pack


class Unsupported(Exception):
    """A span this encoder does not write."""


def _varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    if n < 0x4000:  # a span's length: two bytes
        return bytes(((n & 0x7F) | 0x80, n >> 7))
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _tag(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field."""
    return tag + _varint(len(payload)) + payload


_REQUEST_RESOURCE_SPANS = _tag(ExportTraceServiceRequest.RESOURCE_SPANS_FIELD_NUMBER, _LEN)
_RESOURCE_SCOPE_SPANS = _tag(ResourceSpans.SCOPE_SPANS_FIELD_NUMBER, _LEN)
_SCOPE_SPANS = _tag(ScopeSpans.SPANS_FIELD_NUMBER, _LEN)
_TRACE_ID = _tag(Span.TRACE_ID_FIELD_NUMBER, _LEN) + _varint(16)
_SPAN_ID = _tag(Span.SPAN_ID_FIELD_NUMBER, _LEN) + _varint(8)
_PARENT_SPAN_ID = _tag(Span.PARENT_SPAN_ID_FIELD_NUMBER, _LEN) + _varint(8)
_NAME = _tag(Span.NAME_FIELD_NUMBER, _LEN)
_KIND_INTERNAL = _tag(Span.KIND_FIELD_NUMBER, _VARINT) + _varint(Span.SPAN_KIND_INTERNAL)
_KIND_SERVER = _tag(Span.KIND_FIELD_NUMBER, _VARINT) + _varint(Span.SPAN_KIND_SERVER)
_START = _tag(Span.START_TIME_UNIX_NANO_FIELD_NUMBER, _I64)
_END = _tag(Span.END_TIME_UNIX_NANO_FIELD_NUMBER, _I64)
_ATTRIBUTE = _tag(Span.ATTRIBUTES_FIELD_NUMBER, _LEN)
_EVENT = _tag(Span.EVENTS_FIELD_NUMBER, _LEN)
_STATUS = _tag(Span.STATUS_FIELD_NUMBER, _LEN)
_STATUS_ERROR = _tag(Status.CODE_FIELD_NUMBER, _VARINT) + _varint(Status.STATUS_CODE_ERROR)
_STATUS_MESSAGE = _tag(Status.MESSAGE_FIELD_NUMBER, _LEN)
_FLAGS = _tag(Span.FLAGS_FIELD_NUMBER, _I32)
# SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK, and with SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK (as the SDK's encoder writes).
_FLAGS_LOCAL_PARENT = _FLAGS + struct.pack("<I", 0x100)
_FLAGS_REMOTE_PARENT = _FLAGS + struct.pack("<I", 0x300)
_EVENT_TIME = _tag(Span.Event.TIME_UNIX_NANO_FIELD_NUMBER, _I64)
_EVENT_NAME = _tag(Span.Event.NAME_FIELD_NUMBER, _LEN)
_EVENT_ATTRIBUTE = _tag(Span.Event.ATTRIBUTES_FIELD_NUMBER, _LEN)
_KEY = _tag(KeyValue.KEY_FIELD_NUMBER, _LEN)
_VALUE = _tag(KeyValue.VALUE_FIELD_NUMBER, _LEN)
# AnyValue's oneof: written even when the value is the type's default (a oneof member has presence).
_STRING = _tag(AnyValue.STRING_VALUE_FIELD_NUMBER, _LEN)
_BOOL_TRUE = _tag(AnyValue.BOOL_VALUE_FIELD_NUMBER, _VARINT) + b"\x01"
_BOOL_FALSE = _tag(AnyValue.BOOL_VALUE_FIELD_NUMBER, _VARINT) + b"\x00"
_INT = _tag(AnyValue.INT_VALUE_FIELD_NUMBER, _VARINT)
_DOUBLE = _tag(AnyValue.DOUBLE_VALUE_FIELD_NUMBER, _I64)

# Cached by value: span names, event names and attribute keys are few (the code's own), and so are most attribute
# values (kinds, outcomes, decisions, attempt numbers); a string longer than this is not kept (task ids are not),
# nor an int outside [0, _CACHED_INTS) (fences are not), nor anything past the cache's size.
_CACHED_VALUE_CHARS = 24
_CACHED_INTS = 1024
_CACHE_ENTRIES = 4096
_names: dict[str, bytes] = {}
_keys: dict[str, bytes] = {}
_heads: dict[tuple[str, bool, bool], bytes] = {}
_entries: dict[tuple[bytes, str, type, AttributeValue], bytes] = {}


def _cached(cache: dict[str, bytes], text: str, tag: bytes) -> bytes:
    found = cache.get(text)
    if found is None:
        found = _field(tag, text.encode())
        if len(cache) < _CACHE_ENTRIES:
            cache[text] = found
    return found


def _value(value: AttributeValue) -> bytes:
    """An AnyValue's bytes (bool before int: a bool is an int)."""
    if isinstance(value, str):
        return _field(_STRING, value.encode())
    if isinstance(value, bool):
        return _BOOL_TRUE if value else _BOOL_FALSE
    if isinstance(value, int):
        return _INT + _varint(value & 0xFFFFFFFFFFFFFFFF)  # int64: a negative is its two's complement
    if isinstance(value, float):
        return _DOUBLE + _pack_double(value)
    raise Unsupported(type(value).__name__)


def _attribute(tag: bytes, key: str, value: AttributeValue) -> bytes:
    """One KeyValue field (tag, length, message) of a span or an event."""
    pair = _cached(_keys, key, _KEY) + _field(_VALUE, _value(value))
    return tag + _varint(len(pair)) + pair


assert len(_STRING) == len(_INT) == len(_VALUE) == 1
# By (field tag, key, value type, length of the value's bytes): everything of an uncached attribute's field before
# the value's bytes (the field's tag and length, the key, the value's tags and lengths), which the lengths decide.
_prefixes: dict[tuple[bytes, str, type, int], bytes] = {}


def _uncached(tag: bytes, key: str, value: AttributeValue) -> bytes:
    """_attribute for a value not worth caching (a task id, a fence): its prefix, cached by the value's length,
    then its bytes. This runs for a few attributes of every task span."""
    kind = type(value)
    if kind is str:
        data = value.encode()  # type: ignore[union-attr]
    elif kind is int:
        data = _varint(value & 0xFFFFFFFFFFFFFFFF)  # type: ignore[operator]  # int64: a negative's two's complement
    else:
        return _attribute(tag, key, value)
    cache_key = (tag, key, kind, len(data))
    prefix = _prefixes.get(cache_key)
    if prefix is None:
        whole = _attribute(tag, key, value)
        prefix = whole[: len(whole) - len(data)]
        if len(_prefixes) < _CACHE_ENTRIES:
            _prefixes[cache_key] = prefix
    return prefix + data


def _add_attributes(parts: list[bytes], tag: bytes, attributes: Mapping[str, AttributeValue]) -> None:
    """Append a KeyValue field per attribute. Most values repeat (kinds, outcomes, decisions, flags): their whole
    field is cached, by type as well (True and 1 are equal keys of a dict, not the same value on the wire)."""
    entries = _entries
    for key, value in attributes.items():
        kind = type(value)
        if (kind is str and len(value) > _CACHED_VALUE_CHARS) or (  # type: ignore[arg-type]
            kind is int and not 0 <= value < _CACHED_INTS  # type: ignore[operator]
        ):
            parts.append(_uncached(tag, key, value))
            continue
        cache_key = (tag, key, kind, value)
        entry = entries.get(cache_key)
        if entry is None:
            entry = _attribute(tag, key, value)
            if len(entries) < _CACHE_ENTRIES:
                entries[cache_key] = entry
        parts.append(entry)


def _head(name: str, remote: bool, server: bool) -> bytes:
    """What a span of this name, parent's kind and kind has in common with every other: its name, kind and flags."""
    found = _heads.get((name, remote, server))
    if found is None:
        kind = _KIND_SERVER if server else _KIND_INTERNAL
        found = _field(_NAME, name.encode()) + kind + (_FLAGS_REMOTE_PARENT if remote else _FLAGS_LOCAL_PARENT)
        if len(_heads) < _CACHE_ENTRIES:
            _heads[name, remote, server] = found
    return found


_MASK_64 = 0xFFFFFFFFFFFFFFFF
assert len(_TRACE_ID) == len(_SPAN_ID) == len(_PARENT_SPAN_ID) == 2 and len(_START) == len(_END) == 1
# The ids (big-endian bytes, behind their tags and lengths) and the times (fixed64, little-endian), one struct each.
_pack_ids = struct.Struct(">2sQQ2sQ2sQ").pack
_pack_root_ids = struct.Struct(">2sQQ2sQ").pack
_pack_times = struct.Struct("<1sQ1sQ").pack


def _add_events(parts: list[bytes], events: Sequence[TaskEvent]) -> None:
    for name, at_ns, attributes in events:
        event = [_EVENT_TIME, _pack_fixed64(at_ns), _cached(_names, name, _EVENT_NAME)]
        if attributes:
            _add_attributes(event, _EVENT_ATTRIBUTE, attributes)
        parts.append(_field(_EVENT, b"".join(event)))


def _span(span: TaskSpan) -> bytes:
    """One element of a ScopeSpans' spans: the field's tag and length, then the Span."""
    trace_id = span.trace_id
    if span.parent_span_id:
        ids = _pack_ids(
            _TRACE_ID, trace_id >> 64, trace_id & _MASK_64, _SPAN_ID, span.span_id, _PARENT_SPAN_ID, span.parent_span_id
        )
    else:  # a trace's root: no parent span id
        ids = _pack_root_ids(_TRACE_ID, trace_id >> 64, trace_id & _MASK_64, _SPAN_ID, span.span_id)
    parts = [
        ids,
        _head(span.name, span.parent_remote, span.server),
        _pack_times(_START, span.start_ns, _END, span.end_ns),
    ]
    if span.attributes:
        _add_attributes(parts, _ATTRIBUTE, span.attributes)
    if span.events:
        _add_events(parts, span.events)
    if span.error:
        parts.append(_field(_STATUS, _field(_STATUS_MESSAGE, span.error.encode()) + _STATUS_ERROR))
    body = b"".join(parts)
    return _SCOPE_SPANS + _varint(len(body)) + body


class SharedSpans:
    """Spans that differ only in their ids, a few attributes of their own and perhaps their times (a batch's
    task.start or task.finish spans in the scheduler: one name, one set of times and events, mostly one set of
    attributes; the queue waits of one read in a worker): what they share is written once, and each span is its
    ids, those bytes and its own fields. A span so written parses to the message _span writes for the TaskSpan with
    the same fields, its attributes the shared ones then its own."""

    __slots__ = ("_shared",)

    def __init__(
        self,
        name: str,
        attributes: Mapping[str, AttributeValue],
        events: Sequence[TaskEvent] = (),
        error: str = "",
        times: tuple[int, int] | None = None,
    ) -> None:
        """Spans of this name under remote parents (another process's spans); times: (start, end) epoch
        nanoseconds when they share them, None when each span has its own. Raises Unsupported for an attribute
        value this does not write."""
        parts = [_head(name, True, False)]
        if times is not None:
            parts.append(_pack_times(_START, times[0], _END, times[1]))
        _add_attributes(parts, _ATTRIBUTE, attributes)
        _add_events(parts, events)
        if error:
            parts.append(_field(_STATUS, _field(_STATUS_MESSAGE, error.encode()) + _STATUS_ERROR))
        self._shared = b"".join(parts)

    def span(self, trace_id: int, span_id: int, parent_span_id: int, own: bytes = b"") -> bytes:
        """One span's element of a ScopeSpans (as encoded() gives); own: its own fields (attribute(), times())."""
        ids = _pack_ids(
            _TRACE_ID, trace_id >> 64, trace_id & _MASK_64, _SPAN_ID, span_id, _PARENT_SPAN_ID, parent_span_id
        )
        shared = self._shared
        return _SCOPE_SPANS + _varint(len(ids) + len(shared) + len(own)) + ids + shared + own


def times(start_ns: int, end_ns: int) -> bytes:
    """A span's start and end fields, for SharedSpans.span when the spans have times of their own."""
    return _pack_times(_START, start_ns, _END, end_ns)


def attribute(key: str, value: str | int) -> bytes:
    """One attribute field of a span, for SharedSpans.span: a value of its own (a task id, a fence), not cached."""
    return _uncached(_ATTRIBUTE, key, value)


# By the length of the value's bytes: what comes before a task.id's and a task.fence's bytes (as _uncached).
_task_id_heads: dict[int, bytes] = {}
_fence_heads: dict[int, bytes] = {}


def task_fields(task_id: str, fence: int = 0) -> bytes:
    """The task.id attribute field, then the task.fence one when fence is set (a positive int): what attribute()
    writes for the two, the fields every task span has of its own, with one cache look-up each."""
    data = task_id.encode()
    head = _task_id_heads.get(len(data))
    if head is None:
        head = _uncached(_ATTRIBUTE, "task.id", task_id)[: -len(data) or None]
        if len(_task_id_heads) < _CACHE_ENTRIES:
            _task_id_heads[len(data)] = head
    if fence <= 0:
        return head + data if fence == 0 else head + data + attribute("task.fence", fence)
    number = _varint(fence)
    fence_head = _fence_heads.get(len(number))
    if fence_head is None:
        fence_head = _fence_heads[len(number)] = _uncached(_ATTRIBUTE, "task.fence", fence)[: -len(number)]
    return b"".join((head, data, fence_head, number))


def framing(resource: Resource, scope: InstrumentationScope) -> tuple[bytes, bytes]:
    """The bytes of a ResourceSpans before its scope spans (the resource, its schema URL) and of a ScopeSpans
    before its spans (the scope, its schema URL): fields of a message may come in any order, so the spans follow."""
    from services.core.span_encoding import add_attributes

    resource_spans = ResourceSpans(schema_url=resource.schema_url)
    add_attributes(resource_spans.resource.attributes, resource.attributes)
    scope_spans = ScopeSpans(schema_url=scope.schema_url or "")
    scope_spans.scope.SetInParent()
    scope_spans.scope.name = scope.name
    scope_spans.scope.version = scope.version or ""
    add_attributes(scope_spans.scope.attributes, scope.attributes)
    return resource_spans.SerializeToString(), scope_spans.SerializeToString()


def encoded(span: TaskSpan) -> bytes | TaskSpan:
    """An ended span's element of a ScopeSpans (what request() joins), or the span itself when it holds a value
    this does not write (the exporter then encodes it as the SDK's finished span)."""
    try:
        return _span(span)
    except Unsupported:
        return span


def request(framing: tuple[bytes, bytes], encoded_spans: Sequence[bytes]) -> bytes:
    """An ExportTraceServiceRequest's bytes: one ResourceSpans and ScopeSpans (framing) around encoded spans."""
    resource_head, scope_head = framing
    scope_spans = scope_head + b"".join(encoded_spans)
    return _field(_REQUEST_RESOURCE_SPANS, resource_head + _field(_RESOURCE_SCOPE_SPANS, scope_spans))


def encode(spans: Sequence[TaskSpan]) -> bytes:
    """An ExportTraceServiceRequest's bytes for these ended task spans, one ResourceSpans per recorder."""
    groups: dict[int, tuple[tuple[bytes, bytes], list[bytes]]] = {}
    for span in spans:
        recorder = span.recorder
        group = groups.get(id(recorder))
        if group is None:
            group = groups[id(recorder)] = (recorder.framing, [])
        group[1].append(_span(span))
    return b"".join(request(framing, encoded_spans) for framing, encoded_spans in groups.values())
