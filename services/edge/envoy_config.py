"""Renders the Envoy configuration (JSON, which Envoy reads as YAML) for the local and compose deployments."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

GATEWAY_CLUSTER = "gateways"
SCHEDULER_CLUSTER = "schedulers"
WORKER_SERVICE_PREFIX = "/resilienttask.v1.WorkerService/"


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int


@dataclass(frozen=True)
class EdgeConfig:
    """Everything that differs between deployments of the edge."""

    listen_port: int
    admin_port: int
    gateways: Sequence[Endpoint]
    schedulers: Sequence[Endpoint]
    # "STATIC" for the local stack (IP endpoints), "STRICT_DNS" for compose (service names).
    discovery: str = "STATIC"
    listen_address: str = "0.0.0.0"
    admin_address: str = "127.0.0.1"
    allowed_origins: Sequence[str] = field(default_factory=tuple)
    health_interval_s: float = 2.0


def _duration(seconds: float) -> str:
    return f"{seconds:g}s"


def _cluster(name: str, endpoints: Sequence[Endpoint], config: EdgeConfig) -> dict[str, Any]:
    return {
        "name": name,
        "type": config.discovery,
        "connect_timeout": "1s",
        "lb_policy": "ROUND_ROBIN",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": {"socket_address": {"address": e.host, "port_value": e.port}}}}
                        for e in endpoints
                    ]
                }
            ],
        },
        "health_checks": [
            {
                "timeout": "1s",
                "interval": _duration(config.health_interval_s),
                "no_traffic_interval": _duration(config.health_interval_s),
                "unhealthy_threshold": 2,
                "healthy_threshold": 1,
                "grpc_health_check": {},
            }
        ],
        # Below 50 % healthy Envoy would otherwise route to dead hosts too (panic mode).
        "common_lb_config": {"healthy_panic_threshold": {"value": 0}},
    }


def _route(prefix: str, cluster: str) -> dict[str, Any]:
    return {
        "match": {"prefix": prefix},
        "route": {
            "cluster": cluster,
            # Streams may live for hours; the client's grpc-timeout bounds each call instead.
            "timeout": "0s",
            "max_stream_duration": {"grpc_timeout_header_max": "0s"},
            "retry_policy": {
                "retry_on": "connect-failure,refused-stream,unavailable,reset-before-request",
                "num_retries": 2,
            },
        },
    }


def render(config: EdgeConfig) -> dict[str, Any]:
    """The whole bootstrap configuration as a dict."""
    http_filters: list[dict[str, Any]] = [
        {
            "name": "envoy.filters.http.cors",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"},
        },
        {
            "name": "envoy.filters.http.grpc_web",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWeb"},
        },
        {
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
        },
    ]
    origins = [{"exact": origin} for origin in config.allowed_origins]
    virtual_host = {
        "name": "resilienttask",
        "domains": ["*"],
        "routes": [_route(WORKER_SERVICE_PREFIX, SCHEDULER_CLUSTER), _route("/", GATEWAY_CLUSTER)],
        "typed_per_filter_config": {
            "envoy.filters.http.cors": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
                "allow_origin_string_match": origins,
                "allow_methods": "GET, PUT, DELETE, POST, OPTIONS",
                "allow_headers": "authorization,content-type,x-grpc-web,x-user-agent,grpc-timeout,"
                "connect-protocol-version",
                "expose_headers": "grpc-status,grpc-message,grpc-status-details-bin",
                "max_age": "600",
            }
        },
    }
    listener = {
        "name": "edge",
        "address": {"socket_address": {"address": config.listen_address, "port_value": config.listen_port}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network."
                            "http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "edge",
                            "codec_type": "AUTO",
                            "stream_idle_timeout": "60s",
                            "request_timeout": "0s",
                            "http2_protocol_options": {"max_concurrent_streams": 10000},
                            "route_config": {"name": "edge", "virtual_hosts": [virtual_host]},
                            "http_filters": http_filters,
                        },
                    }
                ]
            }
        ],
    }
    return {
        "admin": {"address": {"socket_address": {"address": config.admin_address, "port_value": config.admin_port}}},
        "static_resources": {
            "listeners": [listener],
            "clusters": [
                _cluster(GATEWAY_CLUSTER, config.gateways, config),
                _cluster(SCHEDULER_CLUSTER, config.schedulers, config),
            ],
        },
    }


def render_text(config: EdgeConfig) -> str:
    return json.dumps(render(config), indent=2) + "\n"
