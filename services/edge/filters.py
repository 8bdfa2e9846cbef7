"""The edge's HTTP filter chain, in the order that keeps it safe, and how its refusals look to gRPC clients.

cors answers preflights before anything else (so a preflight never needs, or bypasses, a token);
grpc_web turns browser requests into gRPC; jwt_authn refuses bad tokens before any service sees them;
the local rate limit guards the unauthenticated AuthService; buffer bounds request bodies;
file_server answers the dashboard's GETs; the router forwards the rest.
"""

from __future__ import annotations

from typing import Any

from services.edge.config import EdgeConfig
from services.edge.routes import (
    BUFFER_FILTER,
    FILE_MANAGER,
    FILE_SERVER_FILTER,
    JWT_FILTER,
    RATE_LIMIT_FILTER,
    USER_REQUIREMENT,
)

_EXT = "type.googleapis.com/envoy.extensions.filters.http"
USER_PROVIDER = "user_tokens"
RESOURCE_EXHAUSTED = 8  # grpc-status code


def _provider(config: EdgeConfig, audience: str) -> dict[str, Any]:
    return {
        "issuer": config.jwt_issuer,
        "audiences": [audience],
        "local_jwks": {"filename": config.jwks_path},
        # The services verify the token again, so it must reach them.
        "forward": True,
        "clock_skew_seconds": config.jwt_clock_skew_s,
    }


def jwt_authn(config: EdgeConfig) -> dict[str, Any]:
    """One provider (user tokens); each route names it or disables the filter.

    A request whose route says nothing falls back to the rule below, which demands a user token:
    a route added without thinking about authentication is closed, not open. The edge routes no
    WorkerService call, so it verifies no worker token (and needs no worker key).
    """
    return {
        "@type": f"{_EXT}.jwt_authn.v3.JwtAuthentication",
        "providers": {
            USER_PROVIDER: _provider(config, config.user_audience),
        },
        "requirement_map": {
            USER_REQUIREMENT: {"provider_name": USER_PROVIDER},
        },
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": USER_PROVIDER}}],
        # A preflight is answered by cors before this filter; one that got here must carry a token.
        "bypass_cors_preflight": False,
    }


def http_filters(config: EdgeConfig) -> list[dict[str, Any]]:
    filters: list[dict[str, Any]] = [
        {"name": "envoy.filters.http.cors", "typed_config": {"@type": f"{_EXT}.cors.v3.Cors"}},
        {"name": "envoy.filters.http.grpc_web", "typed_config": {"@type": f"{_EXT}.grpc_web.v3.GrpcWeb"}},
        {"name": JWT_FILTER, "typed_config": jwt_authn(config)},
        # Inactive unless a route carries a bucket (AuthService does).
        {
            "name": RATE_LIMIT_FILTER,
            "typed_config": {"@type": f"{_EXT}.local_ratelimit.v3.LocalRateLimit", "stat_prefix": "rate_limit"},
        },
        {
            "name": BUFFER_FILTER,
            "typed_config": {"@type": f"{_EXT}.buffer.v3.Buffer", "max_request_bytes": config.max_request_bytes},
        },
    ]
    if config.dashboard_dir is not None:
        filters.append(
            {
                "name": FILE_SERVER_FILTER,
                "typed_config": {"@type": f"{_EXT}.file_server.v3.FileServerConfig", "manager_config": FILE_MANAGER},
            }
        )
    filters.append({"name": "envoy.filters.http.router", "typed_config": {"@type": f"{_EXT}.router.v3.Router"}})
    return filters


def _grpc_reply(status: int) -> dict[str, Any]:
    """A local-reply filter matching Envoy's own answers with this HTTP status to gRPC (and grpc-web) requests."""
    return {
        "and_filter": {
            "filters": [
                {"status_code_filter": {"comparison": {"op": "EQ", "value": {"default_value": status}}}},
                {"header_filter": {"header": {"name": "content-type", "string_match": {"prefix": "application/grpc"}}}},
            ]
        }
    }


def _resource_exhausted(status: int, message: str) -> dict[str, Any]:
    """Answer this refusal as a gRPC trailers-only RESOURCE_EXHAUSTED, for gRPC and grpc-web alike.

    For grpc-web Envoy's reply is plain HTTP (the request was not gRPC when it arrived), and the grpc_web
    filter would derive the status from the HTTP code (429 → UNAVAILABLE, 413 → UNKNOWN), which clients
    retry or misread. HTTP 200, grpc-status in the headers and no body make it a proper gRPC reply.
    """
    return {
        "filter": _grpc_reply(status),
        "status_code": 200,
        "body": {"inline_string": ""},
        "headers_to_add": [
            {"header": {"key": key, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
            for key, value in (("grpc-status", str(RESOURCE_EXHAUSTED)), ("grpc-message", message))
        ],
    }


def local_reply_config() -> dict[str, Any]:
    """Make every refusal by the edge carry the gRPC status the contract promises.

    jwt_authn refuses a token with the wrong audience with 403 (PERMISSION_DENIED); the contract says any
    bad token is UNAUTHENTICATED, and in this chain only jwt_authn answers 403 itself. The rate limit (429)
    and the body bound (413) are RESOURCE_EXHAUSTED.
    """
    return {
        "mappers": [
            {"filter": _grpc_reply(403), "status_code": 401},
            _resource_exhausted(413, "request body too large"),
            _resource_exhausted(429, "too many requests, retry later"),
        ]
    }
