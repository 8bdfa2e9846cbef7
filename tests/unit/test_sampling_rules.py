"""The SDK's own samplers as plain functions (services.core.sampling_rules): the same decision as the sampler's for
every parent a server span can have (none, a remote sampled one, a remote unsampled one)."""

from __future__ import annotations

import random

import pytest
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    DEFAULT_OFF,
    DEFAULT_ON,
    AlwaysRecordSampler,
    ParentBased,
    ParentBasedTraceIdRatio,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags, set_span_in_context

from services.core.sampling_rules import sampling_rule

SAMPLERS: dict[str, Sampler] = {
    "always on": ALWAYS_ON,
    "always off": ALWAYS_OFF,
    "parent-based, always on (the default)": DEFAULT_ON,
    "parent-based, always off": DEFAULT_OFF,
    "trace-id ratio 0.25": TraceIdRatioBased(0.25),
    "parent-based trace-id ratio 0.5": ParentBasedTraceIdRatio(0.5),
    "parent-based, inverted for remote parents": ParentBased(
        TraceIdRatioBased(0.3), remote_parent_sampled=ALWAYS_OFF, remote_parent_not_sampled=ALWAYS_ON
    ),
}


def _sdk_decision(sampler: Sampler, flags: int | None, trace_id: int) -> bool:
    parent = None
    if flags is not None:
        remote = SpanContext(trace_id, 0x1234, True, TraceFlags(flags))
        parent = set_span_in_context(NonRecordingSpan(remote))
    return bool(sampler.should_sample(parent, trace_id, "/p.S/M", SpanKind.SERVER).decision.is_sampled())


@pytest.mark.parametrize("name", SAMPLERS)
def test_a_rule_decides_as_its_sampler_for_every_parent(name: str) -> None:
    sampler = SAMPLERS[name]
    rule = sampling_rule(sampler)
    assert rule is not None
    ids = random.Random(7)
    decisions = []
    for _ in range(2000):
        trace_id = ids.getrandbits(128) or 1
        for flags in (None, 0, 1):
            assert rule(flags, trace_id) == _sdk_decision(sampler, flags, trace_id), (flags, hex(trace_id))
            decisions.append(rule(flags, trace_id))
    if "ratio" in name:  # both decisions occur: the ratio is read, not a constant
        assert any(decisions) and not all(decisions)


def test_a_sampler_of_no_known_kind_has_no_rule() -> None:
    assert sampling_rule(AlwaysRecordSampler(ALWAYS_ON)) is None
    assert sampling_rule(ParentBased(AlwaysRecordSampler(ALWAYS_ON))) is None
