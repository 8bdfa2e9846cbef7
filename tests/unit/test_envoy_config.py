"""The edge config: both deployments pass `envoy --mode validate`, and the rendered config keeps its promises."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jwt
import pytest

from services.core.config import AuthConfig
from services.core.settings import load
from services.core.tokens import mint_user_token, verify_token
from services.edge.auth_limits import ADDRESS_KEY
from services.edge.certs import ensure_dev_tls
from services.edge.config import STRICT_DNS, AuthLimits, EdgeConfig, Endpoint, RateLimit, TlsListener
from services.edge.envoy_config import ADMIN_CLUSTER, render, render_text
from services.edge.jwks import jwks_document, write_jwks
from services.edge.launch import validate
from services.edge.render import COMPOSE_FILE, COMPOSE_JWKS_PATH, COMPOSE_TLS_DIR, compose_config, main

SECRET = b"s" * 48

# Every value Envoy documents for retry_on (router filter and gRPC). `--mode validate` accepts a typo,
# which would silently turn retries off, so the test checks the names instead.
KNOWN_RETRY_ON = {
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
}


def local_config(tmp_path: Path, **overrides: Any) -> EdgeConfig:
    settings: dict[str, Any] = {
        "listen_port": 18080,
        "admin_port": 19901,
        "gateways": [Endpoint("127.0.0.1", 50051), Endpoint("127.0.0.1", 50052)],
        "jwks_path": str(tmp_path / "jwks.json"),
        "allowed_origins": ("http://localhost:8080",),
        **overrides,
    }
    return EdgeConfig(**settings)


def _validate_text(text: str, folder: Path) -> None:
    path = folder / "envoy.json"
    path.write_text(text)
    result = validate(path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def _manager(config: dict[str, Any]) -> dict[str, Any]:
    listener = config["static_resources"]["listeners"][0]
    return listener["filter_chains"][0]["filters"][0]["typed_config"]  # type: ignore[no-any-return]


def _routes(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    routes = _manager(config)["route_config"]["virtual_hosts"][0]["routes"]
    by_path = {}
    for route in routes:
        match = route["match"]
        by_path[match.get("path") or match["prefix"] + ("<GET>" if "headers" in match else "")] = route
    return by_path


def tls_listener(tmp_path: Path, address: str = "127.0.0.1") -> TlsListener:
    files = ensure_dev_tls(tmp_path / "tls")
    return TlsListener(18443, str(files.server_cert), str(files.server_key), address)


@pytest.mark.parametrize("dashboard", [True, False])
@pytest.mark.parametrize("tls", [True, False])
def test_the_local_variant_validates(tmp_path: Path, dashboard: bool, tls: bool) -> None:
    folder = tmp_path / "dist"
    folder.mkdir()
    listener = tls_listener(tmp_path) if tls else None
    config = local_config(tmp_path, dashboard_dir=str(folder) if dashboard else None, tls=listener)
    write_jwks(Path(config.jwks_path), SECRET)
    _validate_text(render_text(config), tmp_path)


def test_the_committed_compose_variant_is_fresh_and_validates(tmp_path: Path) -> None:
    committed = COMPOSE_FILE.read_text()
    assert committed == render_text(compose_config()), "stale: run `python -m services.edge.render compose`"
    # Validation opens the JWKS and the certificate it names; the container writes them at start-up, so
    # stand them in here.
    jwks = write_jwks(tmp_path / "jwks.json", SECRET)
    tls = ensure_dev_tls(tmp_path / "tls").server_cert.parent
    _validate_text(committed.replace(COMPOSE_JWKS_PATH, str(jwks)).replace(COMPOSE_TLS_DIR, str(tls)), tmp_path)


def _bound(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {listener["name"]: listener["address"]["socket_address"] for listener in _listeners(config)}


def _listeners(config: dict[str, Any]) -> list[dict[str, Any]]:
    return config["static_resources"]["listeners"]  # type: ignore[no-any-return]


def test_the_compose_variant_finds_replicas_by_name_and_keeps_admin_private() -> None:
    config = json.loads(COMPOSE_FILE.read_text())
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    # The edge has no way to the schedulers: only the gateways are upstreams, and Envoy's own admin (on its
    # loopback) for the stats listener.
    assert set(clusters) == {"gateways", ADMIN_CLUSTER}
    admin = clusters[ADMIN_CLUSTER]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert admin["address"]["socket_address"] == config["admin"]["address"]["socket_address"]
    assert clusters["gateways"]["type"] == STRICT_DNS
    endpoint = clusters["gateways"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"]["socket_address"] == {"address": "gateway", "port_value": 50051}
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    # Inside its container Envoy listens on every interface; compose publishes plaintext on the host's loopback.
    assert _bound(config) == {
        "edge": {"address": "0.0.0.0", "port_value": 8080},
        "edge_tls": {"address": "0.0.0.0", "port_value": 8443},
        "stats": {"address": "0.0.0.0", "port_value": 9902},
    }


def test_the_stats_listener_serves_prometheus_stats_and_no_other_admin_path() -> None:
    config = json.loads(COMPOSE_FILE.read_text())
    (stats,) = [listener for listener in _listeners(config) if listener["name"] == "stats"]
    (chain,) = stats["filter_chains"]
    manager = chain["filters"][0]["typed_config"]
    (host,) = manager["route_config"]["virtual_hosts"]
    routed, rest = host["routes"]
    assert routed["match"]["path"] == "/stats/prometheus"
    assert routed["match"]["headers"] == [{"name": ":method", "string_match": {"exact": "GET"}}]
    assert routed["route"]["cluster"] == ADMIN_CLUSTER
    assert rest == {"match": {"prefix": "/"}, "direct_response": {"status": 404}}


def test_the_edge_listens_on_loopback_unless_told(tmp_path: Path) -> None:
    assert _bound(render(local_config(tmp_path))) == {"edge": {"address": "127.0.0.1", "port_value": 18080}}
    wide = render(local_config(tmp_path, tls=tls_listener(tmp_path, "0.0.0.0")))
    assert _bound(wide) == {
        "edge": {"address": "127.0.0.1", "port_value": 18080},
        "edge_tls": {"address": "0.0.0.0", "port_value": 18443},
    }


def test_the_tls_listener_serves_the_same_routes_with_h2_and_http1(tmp_path: Path) -> None:
    files = ensure_dev_tls(tmp_path / "tls")
    config = render(local_config(tmp_path, tls=tls_listener(tmp_path)))
    plain, tls = _listeners(config)
    assert "transport_socket" not in plain["filter_chains"][0]
    (chain,) = tls["filter_chains"]
    assert chain["filters"] == plain["filter_chains"][0]["filters"]
    context = chain["transport_socket"]["typed_config"]
    assert context["@type"].endswith("DownstreamTlsContext")
    common = context["common_tls_context"]
    assert common["alpn_protocols"] == ["h2", "http/1.1"]
    assert common["tls_certificates"] == [
        {"certificate_chain": {"filename": str(files.server_cert)}, "private_key": {"filename": str(files.server_key)}}
    ]


def test_a_listener_cannot_share_the_plaintext_port(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="share port"):
        local_config(tmp_path, tls=TlsListener(18080, "c.pem", "k.pem"))


def test_no_rendered_config_holds_the_secret(tmp_path: Path) -> None:
    for text in (COMPOSE_FILE.read_text(), render_text(local_config(tmp_path))):
        assert '"kty"' not in text and '"oct"' not in text
        assert SECRET.decode() not in text


def test_filters_run_in_the_safe_order(tmp_path: Path) -> None:
    for dashboard, tail in [(None, []), ("/srv/dashboard", ["file_server"])]:
        manager = _manager(render(local_config(tmp_path, dashboard_dir=dashboard)))
        names = [f["name"].removeprefix("envoy.filters.http.") for f in manager["http_filters"]]
        assert names == ["cors", "grpc_web", "jwt_authn", "local_ratelimit", "buffer", *tail, "router"]


def test_each_route_demands_the_right_token(tmp_path: Path) -> None:
    config = render(local_config(tmp_path))
    jwt_filter = _manager(config)["http_filters"][2]["typed_config"]

    def access(path: str) -> str:
        per_route = _routes(config)[path]["typed_per_filter_config"]["envoy.filters.http.jwt_authn"]
        if per_route.get("disabled"):
            return "public"
        provider = jwt_filter["requirement_map"][per_route["requirement_name"]]["provider_name"]
        return "/".join(jwt_filter["providers"][provider]["audiences"])

    assert access("/resilienttask.v1.SchedulerService/") == "resilienttask-api"
    assert access("/resilienttask.v1.SchedulerService/WatchTasks") == "resilienttask-api"
    assert access("/resilienttask.v1.ScheduleService/") == "resilienttask-api"
    assert access("/resilienttask.v1.OperatorService/") == "resilienttask-api"
    for public in ("/resilienttask.v1.AuthService/", "/grpc.health.v1.Health/", "/<GET>"):
        assert access(public) == "public"
    # A request no route claims falls back to demanding a user token: closed by default.
    assert jwt_filter["rules"] == [{"match": {"prefix": "/"}, "requires": {"provider_name": "user_tokens"}}]
    assert set(jwt_filter["providers"]) == {"user_tokens"}, "the edge verifies no worker token"
    for provider in jwt_filter["providers"].values():
        assert provider["forward"] is True, "the services verify the token again"
        assert provider["clock_skew_seconds"] <= 5
        assert provider["issuer"] == "resilienttask"
        assert provider["local_jwks"] == {"filename": str(tmp_path / "jwks.json")}


def test_worker_service_is_not_routed_and_reflection_only_when_asked(tmp_path: Path) -> None:
    default = _routes(render(local_config(tmp_path)))
    assert not [path for path in default if "WorkerService" in path or "worker" in path]
    assert "/grpc.reflection." not in default
    with_reflection = _routes(render(local_config(tmp_path, public_reflection=True)))
    assert not [path for path in with_reflection if "WorkerService" in path]
    reflection = with_reflection["/grpc.reflection."]
    assert reflection["typed_per_filter_config"]["envoy.filters.http.jwt_authn"] == {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig",
        "disabled": True,
    }


def test_the_public_health_watch_has_a_lifetime(tmp_path: Path) -> None:
    routes = _routes(render(local_config(tmp_path, health_watch_max_s=90)))
    watch = routes["/grpc.health.v1.Health/Watch"]["route"]
    assert watch["max_stream_duration"] == {"max_stream_duration": "90s", "grpc_timeout_header_max": "90s"}
    assert watch["idle_timeout"] == "60s"
    # The user's own streams are bounded by their token and their idle timeout, not by a lifetime.
    watch_tasks = routes["/resilienttask.v1.SchedulerService/WatchTasks"]["route"]
    assert watch_tasks["max_stream_duration"] == {"grpc_timeout_header_max": "0s"}


def test_unary_calls_are_bounded_and_retried_streams_only_idle_bounded(tmp_path: Path) -> None:
    config = local_config(tmp_path, unary_timeout_s=30, stream_idle_timeout_s=45, public_reflection=True)
    routes = _routes(render(config))
    unary = routes["/resilienttask.v1.SchedulerService/"]["route"]
    assert unary["timeout"] == "30s" and unary["max_stream_duration"] == {"grpc_timeout_header_max": "30s"}
    assert "unavailable" in unary["retry_policy"]["retry_on"].split(",")
    for stream_path in (
        "/resilienttask.v1.SchedulerService/WatchTasks",
        "/grpc.reflection.",
    ):
        stream = routes[stream_path]["route"]
        assert stream["timeout"] == "0s" and stream["idle_timeout"] == "45s"
        assert stream["max_stream_duration"] == {"grpc_timeout_header_max": "0s"}
    # A server stream is retried only if it never reached a service; a bidi stream never.
    watch_retries = routes["/resilienttask.v1.SchedulerService/WatchTasks"]["route"]["retry_policy"]["retry_on"]
    assert "unavailable" not in watch_retries.split(",")
    assert "retry_policy" not in routes["/grpc.reflection."]["route"]
    for route in routes.values():
        if "retry_policy" in route.get("route", {}):
            assert set(route["route"]["retry_policy"]["retry_on"].split(",")) <= KNOWN_RETRY_ON
    # A bidi stream's body never ends, so it is never buffered; unary bodies are (and so bounded).
    assert routes["/grpc.reflection."]["typed_per_filter_config"]["envoy.filters.http.buffer"]["disabled"]
    assert "envoy.filters.http.buffer" not in routes["/resilienttask.v1.SchedulerService/"]["typed_per_filter_config"]


def test_only_auth_service_is_rate_limited_per_client_address_and_method(tmp_path: Path) -> None:
    login = RateLimit(max_tokens=7, tokens_per_fill=3, fill_interval_s=2)
    signup = RateLimit(max_tokens=2, tokens_per_fill=1, fill_interval_s=30)
    limits = AuthLimits(login_per_address=login, signup_per_address=signup, tracked_addresses=123)
    routes = _routes(render(local_config(tmp_path, auth_limits=limits)))
    limited = {
        path for path, r in routes.items() if "envoy.filters.http.local_ratelimit" in r["typed_per_filter_config"]
    }
    assert limited == {"/resilienttask.v1.AuthService/"}
    bucket = routes["/resilienttask.v1.AuthService/"]["typed_per_filter_config"]["envoy.filters.http.local_ratelimit"]
    # One descriptor per request: the method's path, then the client's address (a wildcard: a bucket each).
    (rule,) = bucket["rate_limits"]
    assert rule["actions"] == [
        {"request_headers": {"header_name": ":path", "descriptor_key": "method"}},
        {"masked_remote_address": {"v4_prefix_mask_len": 32, "v6_prefix_mask_len": 64}},
    ]
    assert bucket["descriptors"] == [
        {
            "entries": [{"key": "method", "value": "/resilienttask.v1.AuthService/Login"}, {"key": ADDRESS_KEY}],
            "token_bucket": {"max_tokens": 7, "tokens_per_fill": 3, "fill_interval": "2s"},
        },
        {
            "entries": [{"key": "method", "value": "/resilienttask.v1.AuthService/Signup"}, {"key": ADDRESS_KEY}],
            "token_bucket": {"max_tokens": 2, "tokens_per_fill": 1, "fill_interval": "30s"},
        },
    ]
    # No bucket shared by every client: the one that filled it would refuse everyone else.
    assert bucket["always_consume_default_token_bucket"] is False
    assert bucket["max_dynamic_descriptors"] == 123
    assert bucket["rate_limited_as_resource_exhausted"] is True


def test_the_client_address_is_the_peer_unless_proxies_are_trusted(tmp_path: Path) -> None:
    def trust(config: EdgeConfig) -> set[tuple[bool, int]]:
        """(use_remote_address, xff_num_trusted_hops) of every listener's HTTP connection manager."""
        managers = [
            chain["filters"][0]["typed_config"]
            for listener in render(config)["static_resources"]["listeners"]
            for chain in listener["filter_chains"]
        ]
        return {(m["use_remote_address"], m["xff_num_trusted_hops"]) for m in managers}

    assert trust(local_config(tmp_path)) == {(True, 0)}
    assert trust(compose_config()) == {(True, 0)}  # plaintext and TLS listeners alike
    assert trust(local_config(tmp_path, trusted_proxy_hops=1)) == {(True, 1)}


def test_login_limits_come_from_the_environment() -> None:
    assert load(AuthLimits, {}) == AuthLimits()
    limits = load(
        AuthLimits,
        {
            "RTASK_LOGIN_PER_ADDRESS_MAX_TOKENS": "40",
            "RTASK_SIGNUP_PER_ADDRESS_FILL_INTERVAL_S": "60",
            "RTASK_AUTH_TRACKED_ADDRESSES": "99",
        },
    )
    assert limits.login_per_address == RateLimit(max_tokens=40, tokens_per_fill=1, fill_interval_s=0.5)
    assert limits.signup_per_address == RateLimit(max_tokens=5, tokens_per_fill=1, fill_interval_s=60)
    assert limits.tracked_addresses == 99
    for bad in ({"RTASK_LOGIN_PER_ADDRESS_MAX_TOKENS": "many"}, {"RTASK_SIGNUP_PER_ADDRESS_FILL_INTERVAL_S": "0.01"}):
        with pytest.raises(ValueError):
            load(AuthLimits, bad)


def test_clusters_are_health_checked_http2_with_outlier_detection(tmp_path: Path) -> None:
    for cluster in render(local_config(tmp_path))["static_resources"]["clusters"]:
        options = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
        assert "http2_protocol_options" in options["explicit_http_config"]
        (check,) = cluster["health_checks"]
        assert check["grpc_health_check"] == {} and check["no_traffic_interval"] == check["interval"]
        # Failed checks and state changes are logged, so a "no healthy upstream" can be explained afterwards.
        assert check["always_log_health_check_failures"] is True
        (sink,) = check["event_logger"]
        assert sink["typed_config"]["event_log_path"] == "/dev/stderr"
        assert cluster["outlier_detection"]["consecutive_gateway_failure"] > 0
        assert cluster["common_lb_config"]["healthy_panic_threshold"] == {"value": 0}
        assert cluster["lb_policy"] in ("LEAST_REQUEST", "ROUND_ROBIN")


def test_the_jwks_verifies_what_the_services_mint(tmp_path: Path) -> None:
    path = write_jwks(tmp_path / "jwks.json", SECRET)
    assert path.stat().st_mode & 0o777 == 0o600
    (key,) = json.loads(path.read_text())["keys"]
    assert key["kty"] == "oct" and key["alg"] == "HS256" and "=" not in key["k"]
    config = AuthConfig(jwt_secret=SECRET)
    someone = "00000000-0000-4000-8000-0000000000aa"
    token = mint_user_token(config, someone).token
    claims = jwt.decode(token, jwt.PyJWK(key).key, algorithms=["HS256"], audience=config.audience)
    assert claims["sub"] == verify_token(config, token, config.audience) == someone
    assert jwks_document(SECRET) == json.loads(path.read_text())


def test_the_jwks_command_refuses_without_a_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RTASK_JWT_SECRET", raising=False)
    monkeypatch.delenv("RTASK_JWT_SECRET_FILE", raising=False)
    assert main(["jwks", "--out", str(tmp_path / "jwks.json")]) == 2
    assert not (tmp_path / "jwks.json").exists()
    monkeypatch.setenv("RTASK_JWT_SECRET", "short")
    assert main(["jwks", "--out", str(tmp_path / "jwks.json")]) == 2
    monkeypatch.setenv("RTASK_JWT_SECRET", SECRET.decode())
    assert main(["jwks", "--out", str(tmp_path / "jwks.json")]) == 0
    assert json.loads((tmp_path / "jwks.json").read_text()) == jwks_document(SECRET)


@pytest.mark.parametrize(
    "overrides",
    [
        {"discovery": "LOGICAL_DNS"},
        {"gateways": []},
        {"jwt_clock_skew_s": -1},
        {"unary_timeout_s": 0},
        {"health_watch_max_s": 0},
        {"max_request_bytes": 4096},
        {"trusted_proxy_hops": -1},
    ],
)
def test_bad_edge_settings_are_refused(tmp_path: Path, overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        local_config(tmp_path, **overrides)


@pytest.mark.parametrize("bucket", [(0, 1, 1.0), (1, 0, 1.0), (1, 1, 0.0), (1, 1, 0.01)])
def test_bad_rate_limits_are_refused(bucket: tuple[int, int, float]) -> None:
    with pytest.raises(ValueError):
        RateLimit(*bucket)


def test_validation_catches_a_broken_config(tmp_path: Path) -> None:
    """The CI check is only worth having if it fails: a missing JWKS file is an error, not a warning."""
    text = render_text(local_config(tmp_path, jwks_path=str(tmp_path / "missing.json")))
    path = tmp_path / "envoy.json"
    path.write_text(text)
    result = validate(path)
    assert result.returncode != 0 and "missing.json" in result.stdout + result.stderr
