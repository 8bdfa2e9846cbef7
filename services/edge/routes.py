"""The edge's route table: which cluster serves each gRPC service, who may call it, and how long a call may live.

Only what users call is routed: AuthService, SchedulerService, ScheduleService, OperatorService, health, and
(when asked for) reflection.
WorkerService is not: workers reach the schedulers on their own listeners, which are never published, so
the public edge has no path to it at all (a call is UNAUTHENTICATED without a user token, UNIMPLEMENTED
with one).

Streaming methods are found in the contract's descriptors, so a new streaming RPC gets stream treatment
(no overall timeout, an idle timeout, no replay after it reached a service) without an edit here.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health_pb2

from resilienttask.v1 import auth_pb2, operator_pb2, schedule_pb2, scheduler_pb2
from services.edge.auth_limits import auth_rate_limit
from services.edge.config import EdgeConfig

GATEWAY_CLUSTER = "gateways"
REFLECTION_PREFIX = "/grpc.reflection."  # v1alpha (what grpcurl 1.8 speaks) and v1
HEALTH_WATCH = "/grpc.health.v1.Health/Watch"

# The jwt_authn requirement name routes reference (see filters.jwt_authn).
USER_REQUIREMENT = "user"

JWT_FILTER = "envoy.filters.http.jwt_authn"
RATE_LIMIT_FILTER = "envoy.filters.http.local_ratelimit"
BUFFER_FILTER = "envoy.filters.http.buffer"
FILE_SERVER_FILTER = "envoy.filters.http.file_server"

# Unary calls never reached a service, or the service said UNAVAILABLE: safe to retry elsewhere because
# every mutating RPC is idempotent (SubmitTask by request_id, the others by their target's state).
UNARY_RETRY_ON = "connect-failure,refused-stream,unavailable,reset-before-request"
# A server stream is replayed only when it never reached a service. Client and bidi streams are never
# retried: Envoy would keep a copy of their request body for as long as a retry stayed possible, and
# their clients reconnect on their own.
STREAM_RETRY_ON = "connect-failure,refused-stream,reset-before-request"


class Kind(enum.Enum):
    UNARY = "unary"
    SERVER_STREAM = "server_stream"
    BIDI_STREAM = "bidi_stream"  # client or bidi streaming: the request body never ends, so it is never buffered


class Access(enum.Enum):
    PUBLIC = "public"  # no token: AuthService, health, reflection, the dashboard's files
    USER = "user"  # a user token (audience resilienttask-api)


@dataclass(frozen=True)
class RouteSpec:
    """One gRPC route: an exact method path or a service prefix."""

    path: str
    cluster: str
    kind: Kind
    access: Access
    exact: bool = False
    rate_limited: bool = False
    # A cap on the whole life of a stream (public streams only), on top of the idle timeout.
    max_duration_s: float | None = None


def _service(
    descriptor: ServiceDescriptor, cluster: str, access: Access, rate_limited: bool = False
) -> list[RouteSpec]:
    """Exact routes for the service's streaming methods, then one prefix route for its unary methods."""
    specs = []
    for method in descriptor.methods:
        if method.client_streaming or method.server_streaming:
            kind = Kind.BIDI_STREAM if method.client_streaming else Kind.SERVER_STREAM
            path = f"/{descriptor.full_name}/{method.name}"
            specs.append(RouteSpec(path, cluster, kind, access, exact=True, rate_limited=rate_limited))
    specs.append(RouteSpec(f"/{descriptor.full_name}/", cluster, Kind.UNARY, access, rate_limited=rate_limited))
    return specs


def _health(config: EdgeConfig) -> list[RouteSpec]:
    """Health is public: its Watch streams get a lifetime cap, so no anonymous stream lives forever."""
    specs = _service(health_pb2.DESCRIPTOR.services_by_name["Health"], GATEWAY_CLUSTER, Access.PUBLIC)
    return [
        dataclasses.replace(s, max_duration_s=config.health_watch_max_s) if s.path == HEALTH_WATCH else s for s in specs
    ]


def route_specs(config: EdgeConfig) -> list[RouteSpec]:
    """Every gRPC route, most specific first. Anything else is a 404 (UNIMPLEMENTED) from Envoy itself."""
    specs = [
        # Login and Signup are the only calls open to anyone, so they carry the rate limit.
        *_service(auth_pb2.DESCRIPTOR.services_by_name["AuthService"], GATEWAY_CLUSTER, Access.PUBLIC, True),
        *_service(scheduler_pb2.DESCRIPTOR.services_by_name["SchedulerService"], GATEWAY_CLUSTER, Access.USER),
        *_service(schedule_pb2.DESCRIPTOR.services_by_name["ScheduleService"], GATEWAY_CLUSTER, Access.USER),
        # A user token at the edge; the gateway checks the operator role on every call.
        *_service(operator_pb2.DESCRIPTOR.services_by_name["OperatorService"], GATEWAY_CLUSTER, Access.USER),
        *_health(config),
    ]
    if config.public_reflection:
        specs.append(RouteSpec(REFLECTION_PREFIX, GATEWAY_CLUSTER, Kind.BIDI_STREAM, Access.PUBLIC))
    return specs


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _jwt_per_route(access: Access) -> dict[str, Any]:
    config: dict[str, Any] = {"@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig"}
    if access is Access.PUBLIC:
        config["disabled"] = True
    else:
        config["requirement_name"] = USER_REQUIREMENT
    return config


def _retry_policy(retry_on: str) -> dict[str, Any]:
    return {
        "retry_on": retry_on,
        "num_retries": 3,
        # Jittered waits of up to 0.1, 0.2 and 0.4 s: a brief outage (a store restarting) is ridden out.
        "retry_back_off": {"base_interval": "0.1s", "max_interval": "1s"},
        # Try another replica, not the one that just failed.
        "retry_host_predicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                },
            }
        ],
        "host_selection_retry_max_attempts": 3,
    }


def _route_action(spec: RouteSpec, config: EdgeConfig) -> dict[str, Any]:
    if spec.kind is Kind.UNARY:
        bound = _seconds(config.unary_timeout_s)
        # The client's grpc-timeout is honoured but capped: no unary call outlives unary_timeout_s.
        return {
            "cluster": spec.cluster,
            "timeout": bound,
            "max_stream_duration": {"grpc_timeout_header_max": bound},
            "retry_policy": _retry_policy(UNARY_RETRY_ON),
        }
    # A stream lives as long as the client wants (its own grpc-timeout, if any, is honoured as is),
    # but a silent one is cut after the idle timeout.
    action: dict[str, Any] = {
        "cluster": spec.cluster,
        "timeout": "0s",
        "idle_timeout": _seconds(config.stream_idle_timeout_s),
        "max_stream_duration": {"grpc_timeout_header_max": "0s"},
    }
    if spec.max_duration_s is not None:
        cap = _seconds(spec.max_duration_s)
        # The client's own deadline is honoured up to the cap; without one, the cap ends the stream.
        action["max_stream_duration"] = {"max_stream_duration": cap, "grpc_timeout_header_max": cap}
    if spec.kind is Kind.SERVER_STREAM:
        action["retry_policy"] = _retry_policy(STREAM_RETRY_ON)
    return action


def grpc_route(spec: RouteSpec, config: EdgeConfig) -> dict[str, Any]:
    per_filter: dict[str, Any] = {JWT_FILTER: _jwt_per_route(spec.access)}
    if spec.rate_limited:
        per_filter[RATE_LIMIT_FILTER] = auth_rate_limit(config.auth_limits)
    if spec.kind is Kind.BIDI_STREAM:
        per_filter[BUFFER_FILTER] = {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute",
            "disabled": True,
        }
    match = {"path": spec.path} if spec.exact else {"prefix": spec.path}
    return {
        "match": match,
        "route": _route_action(spec, config),
        "typed_per_filter_config": per_filter,
    }


# Content types of what a web build emits; anything else is served as opaque bytes.
CONTENT_TYPES = {
    "html": "text/html; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "mjs": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "json": "application/json",
    "map": "application/json",
    "svg": "image/svg+xml",
    "png": "image/png",
    "jpg": "image/jpeg",
    "ico": "image/x-icon",
    "webp": "image/webp",
    "woff2": "font/woff2",
    "txt": "text/plain; charset=utf-8",
    "wasm": "application/wasm",
}
FILE_MANAGER = {"id": "dashboard", "thread_pool": {"thread_count": 1}}


def dashboard_route(config: EdgeConfig) -> dict[str, Any]:
    """GET and HEAD of anything else: the dashboard's files (paths are normalized first, so `..` cannot escape)."""
    route: dict[str, Any] = {
        "match": {
            "prefix": "/",
            "headers": [{"name": ":method", "string_match": {"safe_regex": {"regex": "^(GET|HEAD)$"}}}],
        },
        "typed_per_filter_config": {JWT_FILTER: _jwt_per_route(Access.PUBLIC)},
    }
    if config.dashboard_dir is None:
        route["direct_response"] = {"status": 404, "body": {"inline_string": "the dashboard is not built\n"}}
        return route
    # The file server answers before the router; this is what the router would do if it ever let one through.
    route["direct_response"] = {"status": 404}
    route["typed_per_filter_config"][FILE_SERVER_FILTER] = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.file_server.v3.FileServerConfig",
        "manager_config": FILE_MANAGER,
        "path_mappings": [{"request_path_prefix": "/", "file_path_prefix": config.dashboard_dir.rstrip("/")}],
        "content_types": CONTENT_TYPES,
        "default_content_type": "application/octet-stream",
        "directory_behaviors": [{"default_file": "index.html"}],
    }
    return route


def virtual_host(config: EdgeConfig) -> dict[str, Any]:
    return {
        "name": "resilienttask",
        "domains": ["*"],
        "routes": [*(grpc_route(spec, config) for spec in route_specs(config)), dashboard_route(config)],
        "typed_per_filter_config": {
            "envoy.filters.http.cors": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
                "allow_origin_string_match": [{"exact": origin} for origin in config.allowed_origins],
                "allow_methods": "POST",
                # traceparent and tracestate: a browser may start the trace of what it asks for (W3C).
                "allow_headers": (
                    "authorization,content-type,x-grpc-web,x-user-agent,grpc-timeout,traceparent,tracestate"
                ),
                "expose_headers": "grpc-status,grpc-message,grpc-status-details-bin",
                "max_age": "600",
                # Envoy answers every preflight itself: one from a foreign origin gets no CORS headers
                # (the browser refuses) and never reaches a service, token or not.
                "forward_not_matching_preflights": False,
            }
        },
    }
