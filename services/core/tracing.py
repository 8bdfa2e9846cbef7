"""OpenTelemetry tracing: on when an OTLP endpoint is configured, and free when it is not.

Off (no OTEL_EXPORTER_OTLP_ENDPOINT): nothing of tracing is imported or set up (no tracer provider, no
exporter, no export thread), and every helper here returns at once. On: a TracerProvider built by the SDK from the
standard OTEL_* variables (sampler and its ratio, batch processor delays, exporter endpoint and headers), a
resource naming the service and its instance, and spans exported over OTLP gRPC (the SDK's exporter with a
leaner encoder: services.core.span_encoding).

Between our own processes the trace context travels as a W3C `traceparent` string only (never `tracestate`,
whose size a client chooses): in the dispatch entry, the tasks row and the worker protocol. Such a string is
parsed strictly (version 00, exact length); anything else is ignored, never an error.

The spans of one task on the hot path (the worker's and the scheduler's, four per task, each a child of the
submission) are recorded once, at their end, rather than as the SDK's live spans: services.core.task_spans
(docs/observability-cost.md).
"""

from __future__ import annotations

import functools
import logging
import os
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc

from services.core import logging as rtask_logging
from services.core.current_span import CURRENT_SPAN
from services.core.settings import setting

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer
    from opentelemetry.util.types import AttributeValue

    from services.core.task_spans import Recorder, RemoteParent, TaskSpan

log = logging.getLogger(__name__)

# A version-00 traceparent is exactly this long; we produce nothing else and accept nothing else internally.
TRACEPARENT_CHARS = 55
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
# The flags' last hex digit when their sampled bit (0x01) is set.
_SAMPLED_LAST_DIGITS = frozenset("13579bdf")
SERVICE_PREFIX = "resilienttask-"
# Calls that get no server span: health and reflection (noise), and the long-lived streams (a worker's
# Connect, a user's WatchTasks), whose one span would last for hours and say nothing about any one task.
UNTRACED_SERVICES = ("/grpc.health.", "/grpc.reflection.")
UNTRACED_METHODS = frozenset(
    {"/resilienttask.worker.v1.WorkerService/Connect", "/resilienttask.v1.SchedulerService/WatchTasks"}
)
# The batch processor's own defaults are 512 spans a request and a queue of 2,048 (spans past it are dropped):
# at full sampling and a full drain (four spans a task) that wakes the export thread, which takes the GIL from
# the event loop, every hundred tasks. Larger batches: fewer wake-ups and requests, and room for a burst. The
# standard OTEL_BSP_* variables still win when set.
EXPORT_BATCH_SPANS = 2048
EXPORT_QUEUE_SPANS = 16384


@dataclass(frozen=True)
class OtelConfig:
    """The OpenTelemetry SDK's standard variables that we read too (the SDK reads them, and the others, itself).

    Kept as text and read as the SDK reads them (e.g. only "true" disables it), so both agree on what they mean.
    """

    endpoint: str = setting(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "",
        "the OTLP gRPC collector spans are sent to; unset: tracing off and free ([docs/observability.md]"
        "(docs/observability.md)); Envoy's spans go there too when it is plaintext",
    )
    traces_endpoint: str = setting(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "", "the same for traces only (over OTEL_EXPORTER_OTLP_ENDPOINT)"
    )
    sdk_disabled: str = setting("OTEL_SDK_DISABLED", "", "`true`: tracing off whatever the endpoint")
    traces_exporter: str = setting("OTEL_TRACES_EXPORTER", "otlp", "`none`: tracing off")
    traces_sampler: str = setting(
        "OTEL_TRACES_SAMPLER",
        "",
        "the SDK's sampler (e.g. `parentbased_traceidratio`); Envoy starts traces in the same proportion",
        shown_default="parent-based, always on",
    )
    traces_sampler_arg: str = setting("OTEL_TRACES_SAMPLER_ARG", "", "the sampler's ratio (0 to 1)")
    bsp_max_queue_size: str = setting(
        "OTEL_BSP_MAX_QUEUE_SIZE", "", "spans queued for export before new ones are dropped", shown_default="16384"
    )
    bsp_max_export_batch_size: str = setting(
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "", "spans per export request", shown_default="2048"
    )

    @property
    def collector(self) -> str:
        """The traces endpoint in force ("" when none)."""
        return (self.traces_endpoint or self.endpoint).strip()

    @property
    def enabled(self) -> bool:
        """An endpoint is configured, the SDK is not disabled and the exporter is not `none`."""
        disabled = self.sdk_disabled.strip().lower() == "true"
        return bool(self.collector) and not disabled and self.traces_exporter.strip().lower() != "none"


@dataclass(frozen=True)
class TracingConfig:
    """Whether this process traces, and how it names itself in every span's resource."""

    # resilienttask-gateway, resilienttask-scheduler or resilienttask-worker.
    service_name: str
    # Unique per process: the worker id, or the instance name, or host and pid.
    instance_id: str
    # True when an OTLP endpoint is configured (and the SDK is not disabled).
    enabled: bool = False
    otel: OtelConfig = field(default_factory=OtelConfig)

    @classmethod
    def for_process(cls, role: str, otel: OtelConfig, instance_id: str = "") -> TracingConfig:
        """role: gateway, scheduler or worker; instance_id: "" for host and pid."""
        instance = instance_id or f"{socket.gethostname()}-{os.getpid()}"
        return cls(service_name=SERVICE_PREFIX + role, instance_id=instance, enabled=otel.enabled, otel=otel)


_provider: TracerProvider | None = None
_tracer: Tracer | None = None
# Where task spans go (services.core.task_spans), set up with the provider.
_recorder: Recorder | None = None


def enabled() -> bool:
    return _tracer is not None


def recorder() -> Recorder | None:
    """Where this process's task spans go (None when tracing is off)."""
    return _recorder


def configure(config: TracingConfig) -> None:
    """Install the tracer provider and the OTLP exporter when tracing is on; otherwise do nothing at all."""
    global _provider, _tracer, _recorder
    if not config.enabled or _tracer is not None:
        return
    from opentelemetry import propagate, trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    from services.core.span_encoding import SpanExporter
    from services.core.task_spans import Recorder

    # The sampler comes from OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG (default: parent-based, always on).
    provider = TracerProvider(
        resource=Resource.create({"service.name": config.service_name, "service.instance.id": config.instance_id})
    )
    # None: the SDK reads OTEL_BSP_MAX_EXPORT_BATCH_SIZE / OTEL_BSP_MAX_QUEUE_SIZE itself.
    processor = BatchSpanProcessor(
        SpanExporter(),
        max_queue_size=None if config.otel.bsp_max_queue_size else EXPORT_QUEUE_SPANS,
        max_export_batch_size=None if config.otel.bsp_max_export_batch_size else EXPORT_BATCH_SPANS,
    )
    provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    # W3C trace context only: no baggage accepted from clients.
    propagate.set_global_textmap(TraceContextTextMapPropagator())
    _provider = provider
    _tracer = provider.get_tracer("resilienttask")
    _recorder = Recorder(processor, provider.resource, InstrumentationScope("resilienttask"), provider.id_generator)
    rtask_logging.set_trace_lookup(_current_trace_id)
    log.info("tracing on", extra={"service_name": config.service_name, "instance": config.instance_id})


def shutdown() -> None:
    """Export what is still buffered and stop the exporter (blocks up to the exporter's timeout)."""
    global _provider, _tracer, _recorder
    if _provider is not None:
        _provider.shutdown()
    _provider = _tracer = _recorder = None
    rtask_logging.set_trace_lookup(None)


# -- the traceparent strings we carry --------------------------------------------------------------------
def current_parent() -> str | None:
    """The traceparent of the current span (None when tracing is off or no span is current)."""
    if _tracer is None or (current := CURRENT_SPAN.get()) is None:
        return None
    trace_id, span_id, flags = current
    return f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}"


def parse_parent(value: str | bytes | None) -> RemoteParent | None:
    """The remote span a traceparent names, as (trace id, span id, flags), or None when tracing is off or the
    value is absent or malformed."""
    if _recorder is None or not value or len(value) != TRACEPARENT_CHARS:
        return None
    return _parsed(value.decode("ascii", errors="replace") if isinstance(value, bytes) else value)


@functools.lru_cache(maxsize=1024)
def _parsed(text: str) -> RemoteParent | None:
    """Cached: the replicas of one submission (up to 50 tasks) carry one traceparent, read by the worker for each
    of its spans and by the scheduler for each transition."""
    if _TRACEPARENT.fullmatch(text) is None:
        return None
    trace_id, span_id = int(text[3:35], 16), int(text[36:52], 16)
    if not trace_id or not span_id:
        return None
    return trace_id, span_id, int(text[53:], 16)


def sampled_parent(value: str) -> str:
    """value when tracing is on and it is a version-00 traceparent of a sampled trace, else "" (what a process
    passes on for the next one's spans: that one parses it strictly)."""
    if _recorder is None or len(value) != TRACEPARENT_CHARS or value[54] not in _SAMPLED_LAST_DIGITS:
        return ""
    return value


@contextmanager
def span(name: str, attributes: dict[str, AttributeValue] | None = None) -> Iterator[TaskSpan | None]:
    """A span under the current one while the block runs (None when tracing is off or the current span is not
    sampled), recorded at its end as a task span: not the SDK's live span (a sampler call, locks, a finished copy
    encoded field by field on the export thread), and not made current (nothing under it makes spans). An
    exception leaving the block marks it as an error."""
    current = CURRENT_SPAN.get()
    if _recorder is None or current is None or not current[2] & 1:
        yield None
        return
    recorded = _recorder.start(name, current, time.time_ns(), attributes, remote=False)
    assert recorded is not None
    error = ""
    try:
        yield recorded
    except BaseException as exc:
        error = repr(exc)
        raise
    finally:
        recorded.end(error=error)


# -- the spans of a task on the hot path ---------------------------------------------------------------
def task_span(
    name: str, parent: RemoteParent | None, start_ns: int, attributes: dict[str, AttributeValue] | None = None
) -> TaskSpan | None:
    """A span under a remote parent (parse_parent), or None when tracing is off, the parent is absent, or
    its trace was not sampled."""
    if parent is None or _recorder is None:
        return None
    return _recorder.start(name, parent, start_ns, attributes)


# -- gRPC server spans ---------------------------------------------------------------------------------
def _traced(details: grpc.HandlerCallDetails) -> bool:
    method = details.method or ""
    return method not in UNTRACED_METHODS and not method.startswith(UNTRACED_SERVICES)


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """A server span per RPC, continuing the caller's traceparent (services.core.server_spans); none when tracing
    is off."""
    if _provider is None or _recorder is None:
        return []
    from services.core.server_spans import ServerSpans

    return [ServerSpans(_recorder, _provider.sampler, _traced, parse_parent)]


# -- log lines ---------------------------------------------------------------------------------------
def _current_trace_id() -> str | None:
    current = CURRENT_SPAN.get()
    return None if current is None else f"{current[0]:032x}"
