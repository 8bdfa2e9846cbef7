"""Renders the Envoy bootstrap (as JSON) for every deployment from one EdgeConfig."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from services.edge.config import STRICT_DNS, EdgeConfig, Endpoint, RateLimit, TlsListener
from services.edge.filters import http_filters, local_reply_config
from services.edge.routes import GATEWAY_CLUSTER, virtual_host

__all__ = [
    "ADMIN_CLUSTER",
    "GATEWAY_CLUSTER",
    "EdgeConfig",
    "Endpoint",
    "RateLimit",
    "TlsListener",
    "clusters",
    "listeners",
    "render",
    "render_text",
]


# Envoy's spans: the collector's cluster, and the service.name they carry.
TRACE_COLLECTOR_CLUSTER = "otel_collector"
EDGE_SERVICE_NAME = "resilienttask-edge"
# Spans Envoy's tracer buffers before it sends them in one export request (services.core.tracing batches alike).
EDGE_EXPORT_BATCH_SPANS = 256


# How long Envoy waits for a replica's health answer before counting the check as failed.
HEALTH_CHECK_TIMEOUT_S = 2.0


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _cluster(name: str, endpoints: Sequence[Endpoint], config: EdgeConfig) -> dict[str, Any]:
    interval = _seconds(config.health_interval_s)
    cluster: dict[str, Any] = {
        "name": name,
        "type": config.discovery,
        "connect_timeout": "1s",
        # Long-lived streams count as active requests, so new work goes to the least busy replica.
        "lb_policy": "LEAST_REQUEST",
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
        # grpc.health.v1 Check of the whole server (""), which reports NOT_SERVING when its stores are down.
        "health_checks": [
            {
                # A replica that answers NOT_SERVING, or refuses connections, fails at once; the timeout only
                # decides when a replica too slow to answer counts as failed. At 1 s, two stalls of the same
                # second on a loaded 2-core machine took every gateway out of rotation at once.
                "timeout": _seconds(HEALTH_CHECK_TIMEOUT_S),
                "interval": interval,
                "no_traffic_interval": interval,  # the default (60 s) would notice a dead idle replica a minute late
                "unhealthy_threshold": 2,
                "healthy_threshold": 1,
                "grpc_health_check": {},
                # Every failed check and every change of a replica's state, as JSON lines on Envoy's stderr (its
                # log): why Envoy answered "no healthy upstream" must be readable afterwards.
                "always_log_health_check_failures": True,
                "event_logger": [
                    {
                        "name": "envoy.health_check.event_sinks.file",
                        "typed_config": {
                            "@type": "type.googleapis.com/"
                            "envoy.extensions.health_check.event_sinks.file.v3.HealthCheckEventFileSink",
                            "event_log_path": "/dev/stderr",
                        },
                    }
                ],
            }
        ],
        # Between health checks, replicas that answer UNAVAILABLE or refuse connections are set aside.
        # Only gateway-class failures count: an application error (INTERNAL, UNIMPLEMENTED) says nothing
        # about the replica's health. A passing health check lets an ejected replica back at once.
        "outlier_detection": {
            "consecutive_gateway_failure": 3,
            "enforcing_consecutive_gateway_failure": 100,
            "enforcing_consecutive_5xx": 0,
            "enforcing_success_rate": 0,
            "interval": interval,
            "base_ejection_time": "10s",
            "max_ejection_percent": 50,
        },
        "common_lb_config": {
            # Below 50 % healthy Envoy would otherwise route to dead hosts too (panic mode).
            "healthy_panic_threshold": {"value": 0},
        },
        # Every watcher holds a request open: the defaults (1,024 requests, 3 concurrent retries) are far too low.
        "circuit_breakers": {
            "thresholds": [
                {
                    "max_connections": 100_000,
                    "max_pending_requests": 100_000,
                    "max_requests": 100_000,
                    "retry_budget": {"budget_percent": {"value": 25.0}, "min_retry_concurrency": 16},
                }
            ]
        },
    }
    if config.discovery == STRICT_DNS:
        cluster["dns_lookup_family"] = "V4_ONLY"
        cluster["dns_refresh_rate"] = _seconds(config.dns_refresh_s)
    return cluster


def _client_address(config: EdgeConfig) -> dict[str, Any]:
    """Which address is the client's, for the per-address rate limits and the x-forwarded-for sent upstream.

    use_remote_address: the TCP peer, not a header. With 0 trusted hops a client-sent x-forwarded-for is
    kept but never believed: Envoy appends the peer and takes the address from there.
    """
    return {"use_remote_address": True, "xff_num_trusted_hops": config.trusted_proxy_hops}


def _http_manager(config: EdgeConfig) -> dict[str, Any]:
    """The one HTTP pipeline both listeners share: same routes, filters and stats (prefix `edge`)."""
    return {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
        "HttpConnectionManager",
        "stat_prefix": "edge",
        # Browsers send grpc-web over HTTP/1.1; grpcio and grpcurl speak HTTP/2.
        "codec_type": "AUTO",
        **_client_address(config),
        # Resolve `..` and `//` before routing, so no path escapes a route or the dashboard folder.
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "REJECT_REQUEST",
        "stream_idle_timeout": _seconds(config.stream_idle_timeout_s),
        # Streams send their request body for as long as they live: no whole-request deadline.
        "request_timeout": "0s",
        "request_headers_timeout": "10s",
        "http2_protocol_options": {"max_concurrent_streams": 10000},
        "route_config": {"name": "edge", "virtual_hosts": [virtual_host(config)]},
        "http_filters": http_filters(config),
        "local_reply_config": local_reply_config(),
        **_tracing(config),
    }


def _tracing(config: EdgeConfig) -> dict[str, Any]:
    """Envoy's own span per request, exported to the collector: it continues the client's traceparent and sends
    its own to the gateway. A request without a trace starts one at the services' sampling ratio; the services'
    parent-based sampler then follows Envoy's decision."""
    if config.trace_collector is None:
        return {}
    return {
        "tracing": {
            "provider": {
                "name": "envoy.tracers.opentelemetry",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                    "grpc_service": {"envoy_grpc": {"cluster_name": TRACE_COLLECTOR_CLUSTER}, "timeout": "1s"},
                    "service_name": EDGE_SERVICE_NAME,
                },
            },
            "random_sampling": {"value": config.trace_sampling_percent},
        }
    }


def _collector_cluster(collector: Endpoint) -> dict[str, Any]:
    """The OTLP gRPC collector, by name or address (re-resolved, so a collector container may move)."""
    return {
        "name": TRACE_COLLECTOR_CLUSTER,
        "type": STRICT_DNS,
        "dns_lookup_family": "V4_ONLY",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": TRACE_COLLECTOR_CLUSTER,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {"socket_address": {"address": collector.host, "port_value": collector.port}}
                            }
                        }
                    ]
                }
            ],
        },
    }


def _http_filter_chain(config: EdgeConfig) -> dict[str, Any]:
    return {
        "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": _http_manager(config)}]
    }


def _listener(config: EdgeConfig) -> dict[str, Any]:
    return {
        "name": "edge",
        "address": {"socket_address": {"address": config.listen_address, "port_value": config.listen_port}},
        "filter_chains": [_http_filter_chain(config)],
    }


def _tls_listener(config: EdgeConfig, tls: TlsListener) -> dict[str, Any]:
    """TLS terminated by Envoy; ALPN offers h2 (gRPC) and http/1.1 (grpc-web from browsers that pick it)."""
    chain = _http_filter_chain(config)
    chain["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "common_tls_context": {
                "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
                "alpn_protocols": ["h2", "http/1.1"],
                "tls_certificates": [
                    {
                        "certificate_chain": {"filename": tls.cert_chain_path},
                        "private_key": {"filename": tls.private_key_path},
                    }
                ],
            },
        },
    }
    return {
        "name": "edge_tls",
        "address": {"socket_address": {"address": tls.address, "port_value": tls.port}},
        "filter_chains": [chain],
    }


# The cluster that reaches Envoy's own admin listener, used by the stats listener only.
ADMIN_CLUSTER = "envoy_admin"
PROMETHEUS_STATS_PATH = "/stats/prometheus"


def _stats_listener(config: EdgeConfig, port: int) -> dict[str, Any]:
    """GET /stats/prometheus, proxied to the admin; every other path is a 404, so no admin command is reachable."""
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
        "HttpConnectionManager",
        "stat_prefix": "stats",
        "codec_type": "AUTO",
        **_client_address(config),
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "REJECT_REQUEST",
        "request_headers_timeout": "10s",
        "route_config": {
            "name": "stats",
            "virtual_hosts": [
                {
                    "name": "stats",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {
                                "path": PROMETHEUS_STATS_PATH,
                                "headers": [{"name": ":method", "string_match": {"exact": "GET"}}],
                            },
                            "route": {"cluster": ADMIN_CLUSTER, "timeout": "10s"},
                        },
                        {"match": {"prefix": "/"}, "direct_response": {"status": 404}},
                    ],
                }
            ],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
            }
        ],
    }
    return {
        "name": "stats",
        "address": {"socket_address": {"address": config.listen_address, "port_value": port}},
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]}
        ],
    }


def _admin_cluster(config: EdgeConfig) -> dict[str, Any]:
    address = {"socket_address": {"address": config.admin_address, "port_value": config.admin_port}}
    return {
        "name": ADMIN_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": ADMIN_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        },
    }


def listeners(config: EdgeConfig) -> list[dict[str, Any]]:
    """The plaintext listener, the TLS one and the stats one when configured. No listener routes WorkerService."""
    found = [_listener(config)]
    if config.tls is not None:
        found.append(_tls_listener(config, config.tls))
    if config.stats_port is not None:
        found.append(_stats_listener(config, config.stats_port))
    return found


def clusters(config: EdgeConfig) -> list[dict[str, Any]]:
    """The gateways, the trace collector when Envoy traces, and Envoy's own admin when the stats listener needs it."""
    found = [_cluster(GATEWAY_CLUSTER, config.gateways, config)]
    if config.trace_collector is not None:
        found.append(_collector_cluster(config.trace_collector))
    if config.stats_port is not None:
        found.append(_admin_cluster(config))
    return found


def _trace_runtime(config: EdgeConfig) -> dict[str, Any]:
    """When Envoy traces: its tracer's export batch. By default it sends an export request every 5 spans, from the
    thread that finished the request (a span per SubmitTask and GetStats call at full sampling); a larger batch
    sends one every few hundred, or every 5 s (the tracer's flush interval) when fewer came."""
    if config.trace_collector is None:
        return {}
    layer = {"tracing.opentelemetry.min_flush_spans": EDGE_EXPORT_BATCH_SPANS}
    # The admin layer as well, which a bootstrap without layered_runtime has by itself (/runtime_modify).
    return {
        "layered_runtime": {
            "layers": [{"name": "tracing", "static_layer": layer}, {"name": "admin", "admin_layer": {}}]
        }
    }


def render(config: EdgeConfig) -> dict[str, Any]:
    """The whole bootstrap configuration as a dict."""
    return {
        # Admin (stats, /clusters, /stats/prometheus) is never exposed beyond the machine or container.
        "admin": {"address": {"socket_address": {"address": config.admin_address, "port_value": config.admin_port}}},
        "static_resources": {
            "listeners": listeners(config),
            "clusters": clusters(config),
        },
        **_trace_runtime(config),
    }


def render_text(config: EdgeConfig) -> str:
    return json.dumps(render(config), indent=2) + "\n"
