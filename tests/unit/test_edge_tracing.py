"""Envoy's own spans: made and exported only when the services trace to a plaintext OTLP collector."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.core.settings import load
from services.core.tracing import OtelConfig
from services.edge.config import Endpoint, trace_collector, trace_sampling_percent
from services.edge.envoy_config import (
    EDGE_EXPORT_BATCH_SPANS,
    EDGE_SERVICE_NAME,
    TRACE_COLLECTOR_CLUSTER,
    render,
    render_text,
)
from services.edge.jwks import write_jwks
from tests.unit.test_envoy_config import SECRET, _manager, _validate_text, local_config


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}, Endpoint("127.0.0.1", 4317)),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317"}, Endpoint("collector", 4317)),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector"}, Endpoint("collector", 4317)),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:1", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://b:2"},
            Endpoint("b", 2),
        ),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector:4317"}, None),  # TLS: the services only
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://[::1"}, None),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_SDK_DISABLED": "true"}, None),
    ],
)
def test_the_collector_comes_from_the_services_otlp_endpoint(env: dict[str, str], expected: Endpoint | None) -> None:
    assert trace_collector(load(OtelConfig, env)) == expected


def test_without_a_collector_envoy_makes_no_spans(tmp_path: Path) -> None:
    config = render(local_config(tmp_path))
    assert "tracing" not in _manager(config)
    assert TRACE_COLLECTOR_CLUSTER not in json.dumps(config) and "layered_runtime" not in config


def test_with_a_collector_envoy_exports_its_spans_over_http2_and_validates(tmp_path: Path) -> None:
    edge = local_config(tmp_path, trace_collector=Endpoint("127.0.0.1", 4317))
    config = render(edge)
    provider = _manager(config)["tracing"]["provider"]
    assert provider["name"] == "envoy.tracers.opentelemetry"
    assert provider["typed_config"]["service_name"] == EDGE_SERVICE_NAME
    assert provider["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"] == TRACE_COLLECTOR_CLUSTER
    (cluster,) = [c for c in config["static_resources"]["clusters"] if c["name"] == TRACE_COLLECTOR_CLUSTER]
    assert "http2_protocol_options" in json.dumps(cluster)
    # Its spans go out a few hundred to a request, not 5 (the tracer's default).
    layer, admin = config["layered_runtime"]["layers"]
    assert layer["static_layer"] == {"tracing.opentelemetry.min_flush_spans": EDGE_EXPORT_BATCH_SPANS}
    assert "admin_layer" in admin, "the admin's runtime layer is kept"
    write_jwks(Path(edge.jwks_path), SECRET)
    _validate_text(render_text(edge), tmp_path)


@pytest.mark.parametrize(
    ("env", "percent"),
    [
        ({}, 100.0),
        ({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}, 10.0),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "garbage"}, 100.0),
        ({"OTEL_TRACES_SAMPLER": "parentbased_always_off"}, 0.0),
        ({"OTEL_TRACES_SAMPLER": "always_on"}, 100.0),
    ],
)
def test_envoy_starts_traces_at_the_services_sampling_ratio(
    tmp_path: Path, env: dict[str, str], percent: float
) -> None:
    assert trace_sampling_percent(load(OtelConfig, env)) == pytest.approx(percent)
    edge = local_config(tmp_path, trace_collector=Endpoint("c", 4317), trace_sampling_percent=percent)
    assert _manager(render(edge))["tracing"]["random_sampling"] == {"value": percent}
