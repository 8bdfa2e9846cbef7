"""The process's sampler as a plain function of a server span's remote parent and trace id.

Asking the SDK's sampler builds a parent context (a SpanContext, a NonRecordingSpan, a Context), reads it back and
returns a SamplingResult with the parent's trace state: 4.5 µs of Python per gRPC call in a warm loop, several
times that when run cold between a call's other work (a server span's start took 62 µs of a single SubmitTask in
the live gateway, docs/observability-cost-parts.md). The SDK's own samplers (always on or off, a trace-id ratio,
parent-based over those: everything OTEL_TRACES_SAMPLER names) decide from the parent's sampled flag and the trace
id alone, so their decision is rebuilt here once, from their settings; any other sampler gets no rule and is asked
as the SDK asks it.
"""

from __future__ import annotations

from collections.abc import Callable

from opentelemetry.sdk.trace.sampling import ParentBased, Sampler, StaticSampler, TraceIdRatioBased

# (the remote parent's trace flags, or None when the call starts a trace; the trace id) -> sampled
SamplingRule = Callable[[int | None, int], bool]
_SAMPLED_FLAG = 0x01


def sampling_rule(sampler: Sampler) -> SamplingRule | None:
    """The sampler's decision for a span whose parent is remote or absent, or None when it is not one of the SDK's
    own samplers (or its settings cannot be read)."""
    if isinstance(sampler, StaticSampler):
        decision = getattr(sampler, "_decision", None)
        if decision is None:
            return None
        sampled = bool(decision.is_sampled())
        return lambda _flags, _trace_id: sampled
    if isinstance(sampler, TraceIdRatioBased):
        bound, limit = sampler.bound, TraceIdRatioBased.TRACE_ID_LIMIT
        return lambda _flags, trace_id: trace_id & limit < bound
    if isinstance(sampler, ParentBased):
        parts = [
            getattr(sampler, name, None) for name in ("_root", "_remote_parent_sampled", "_remote_parent_not_sampled")
        ]
        rules = [sampling_rule(part) if isinstance(part, Sampler) else None for part in parts]
        root, when_sampled, when_not_sampled = rules
        if root is None or when_sampled is None or when_not_sampled is None:
            return None

        def parent_based(flags: int | None, trace_id: int) -> bool:
            if flags is None:
                return root(None, trace_id)
            return (when_sampled if flags & _SAMPLED_FLAG else when_not_sampled)(flags, trace_id)

        return parent_based
    return None
