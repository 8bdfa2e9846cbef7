"""What differs between deployments of the edge, as one frozen dataclass the renderer turns into Envoy config."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from services.core.config import AuthConfig, ConfigError
from services.core.settings import nested, setting
from services.core.tracing import OtelConfig

# Discovery types Envoy understands for our clusters.
STATIC = "STATIC"  # the local stack: IP endpoints chosen by the launcher
STRICT_DNS = "STRICT_DNS"  # compose: every address behind a service name, re-resolved (so --scale needs no edit)


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int


@dataclass(frozen=True)
class TlsListener:
    """The TLS listener: where it binds and the certificate and key Envoy presents (PEM files)."""

    port: int
    cert_chain_path: str
    private_key_path: str
    # Loopback unless the deployment asks for more (`rtask-stack up --listen`, or a container).
    address: str = "127.0.0.1"


@dataclass(frozen=True)
class RateLimit:
    """A token bucket: max_tokens requests at once, refilled by tokens_per_fill every fill_interval_s."""

    max_tokens: int = setting("_MAX_TOKENS", help="requests at once (the bucket's size)")
    tokens_per_fill: int = setting("_TOKENS_PER_FILL", help="requests added at each fill")
    fill_interval_s: float = setting("_FILL_INTERVAL_S", help="seconds between two fills")

    def __post_init__(self) -> None:
        # Envoy refills no more often than every 50 ms.
        if self.max_tokens < 1 or self.tokens_per_fill < 1 or self.fill_interval_s < 0.05:
            raise ValueError(f"invalid rate limit {self}")


@dataclass(frozen=True)
class AuthLimits:
    """Envoy's token buckets for the unauthenticated AuthService: one per client address and method.

    The address is the TCP peer (or, behind trusted proxies, the address they vouch for: see
    EdgeConfig.trusted_proxy_hops); IPv6 clients count per /64, since one host may hold a whole /64.
    Defaults, for bcrypt cost 12 on 2 cores (~16 hashes/s for the whole machine):
    - Login: 20 at once, then 2 a second: one address takes at most ~1/8 of the hashing capacity, and a
      household or office behind one NAT logging in together fits in the burst.
    - Signup: 5 at once, then one every 10 s: probing which emails are registered (ALREADY_EXISTS) costs
      an address 10 s per email after the first five.
    - 20,000 addresses tracked per method; the least recently seen are forgotten first.
    Envoy's buckets are per Envoy process: each edge replica counts on its own.
    """

    # Envoy's login bucket per client address (RTASK_LOGIN_PER_ADDRESS_*).
    login_per_address: RateLimit = nested(
        "RTASK_LOGIN_PER_ADDRESS",
        lambda: RateLimit(max_tokens=20, tokens_per_fill=1, fill_interval_s=0.5),
        help="Envoy's login bucket per client address",
    )
    # Envoy's signup bucket per client address (RTASK_SIGNUP_PER_ADDRESS_*).
    signup_per_address: RateLimit = nested(
        "RTASK_SIGNUP_PER_ADDRESS",
        lambda: RateLimit(max_tokens=5, tokens_per_fill=1, fill_interval_s=10.0),
        help="Envoy's signup bucket per client address",
    )
    tracked_addresses: int = setting(
        "RTASK_AUTH_TRACKED_ADDRESSES",
        20_000,
        "client addresses Envoy keeps a bucket for, per method (least recent forgotten first)",
    )

    def __post_init__(self) -> None:
        if self.tracked_addresses < 1:
            raise ConfigError("RTASK_AUTH_TRACKED_ADDRESSES must be at least 1")


# One HTTP/2 flow-control window: bodies beyond it always arrive in several reads.
MIN_REQUEST_LIMIT_BYTES = 64 * 1024


@dataclass(frozen=True)
class EdgeConfig:
    """Everything that differs between deployments of the edge (local launcher, compose)."""

    listen_port: int
    admin_port: int
    gateways: Sequence[Endpoint]
    # The JWKS file (an `oct` key holding the services' HS256 secret), written at start-up, never committed.
    jwks_path: str
    discovery: str = STATIC
    # The plaintext listener. Loopback by default: only a deployment that means it (a container, whose
    # network is the boundary) listens wider, and the local stack never does (its TLS listener may).
    listen_address: str = "127.0.0.1"
    # The TLS listener (h2 and http/1.1 by ALPN, so grpc-web from browsers and gRPC alike); None: none.
    tls: TlsListener | None = None
    admin_address: str = "127.0.0.1"
    # A listener that serves the admin's /stats/prometheus and nothing else, for a Prometheus that cannot reach
    # the admin's loopback (another container); None: none. The admin itself stays on admin_address.
    stats_port: int | None = None
    # Browser origins allowed by CORS; empty means none (same-origin pages need no CORS).
    allowed_origins: Sequence[str] = field(default_factory=tuple)
    # The dashboard's built files, served at /; None answers / with a short "not built" 404.
    dashboard_dir: str | None = None
    jwt_issuer: str = AuthConfig.issuer
    user_audience: str = AuthConfig.audience
    # Envoy's default (60 s) would accept a token a minute after it expired; the services allow none.
    jwt_clock_skew_s: int = 5
    auth_limits: AuthLimits = field(default_factory=AuthLimits)
    # Proxies in front of Envoy whose x-forwarded-for entries are believed. 0: the client address is the
    # TCP peer and a client-sent x-forwarded-for is ignored (Envoy appends the peer to it). Set it only
    # behind load balancers that append the address they saw, or any client can pick its own address.
    trusted_proxy_hops: int = 0
    # Request bodies above this are refused at the edge (the services' own limit is 1 MiB per message).
    # At least MIN_REQUEST_LIMIT_BYTES: a body that arrives in one read is never held back, so a smaller
    # limit would be enforced only sometimes.
    max_request_bytes: int = 1 << 20
    unary_timeout_s: float = 30.0
    # Streams may live for hours but not stay silent longer than this: it must exceed the server's
    # WatchTasks heartbeat interval.
    stream_idle_timeout_s: float = 60.0
    # Health/Watch is public (no token): its streams end after this long, whatever they carry, so anonymous
    # clients cannot hold streams open forever. Watchers reconnect.
    health_watch_max_s: float = 300.0
    # Server reflection answers anyone who asks what the services offer: off at the edge unless asked for
    # (grpcurl works without it from the protoset the local stack writes, or from the .proto files).
    public_reflection: bool = False
    health_interval_s: float = 2.0
    dns_refresh_s: float = 5.0
    # An OTLP gRPC collector for Envoy's own spans (docs/observability.md); None: Envoy makes no spans and passes
    # a client's traceparent through untouched.
    trace_collector: Endpoint | None = None
    # Requests Envoy starts a trace for when the client sent none (the services follow its decision).
    trace_sampling_percent: float = 100.0

    def __post_init__(self) -> None:
        if self.discovery not in (STATIC, STRICT_DNS):
            raise ValueError(f"discovery must be {STATIC} or {STRICT_DNS}, got {self.discovery!r}")
        if not self.gateways:
            raise ValueError("the edge needs at least one gateway endpoint")
        if self.trusted_proxy_hops < 0:
            raise ValueError("trusted_proxy_hops must be >= 0")
        if self.jwt_clock_skew_s < 0:
            raise ValueError("the JWT clock skew must be >= 0")
        if self.max_request_bytes < MIN_REQUEST_LIMIT_BYTES:
            raise ValueError(f"max_request_bytes must be at least {MIN_REQUEST_LIMIT_BYTES}")
        if self.tls is not None and self.tls.port == self.listen_port and self.tls.port != 0:
            raise ValueError(f"the TLS and plaintext listeners cannot share port {self.listen_port}")
        timeouts = (self.unary_timeout_s, self.stream_idle_timeout_s, self.health_interval_s, self.health_watch_max_s)
        if min(timeouts) <= 0:
            raise ValueError("timeouts and intervals must be positive")


def trace_collector(otel: OtelConfig) -> Endpoint | None:
    """The plaintext OTLP gRPC collector the services trace to (OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT), for Envoy's
    spans too; None when tracing is off or the endpoint needs TLS (Envoy's spans are then left out)."""
    endpoint = otel.collector
    if not endpoint or otel.sdk_disabled.strip().lower() == "true":
        return None
    try:
        parsed = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
        port = parsed.port
    except ValueError:  # a malformed endpoint: the services' exporter will say so; Envoy just makes no spans
        return None
    if parsed.scheme != "http" or not parsed.hostname:
        return None
    return Endpoint(parsed.hostname, port or 4317)


# OTEL_TRACES_SAMPLER values whose decision, for a call that comes without a trace, is a ratio or never.
_RATIO_SAMPLERS = frozenset({"traceidratio", "parentbased_traceidratio"})
_OFF_SAMPLERS = frozenset({"always_off", "parentbased_always_off"})


def trace_sampling_percent(otel: OtelConfig) -> float:
    """Envoy's share of requests to start a trace for: the services' sampler (OTEL_TRACES_SAMPLER[_ARG]) as a
    percentage, so a trace Envoy starts is kept as often as one the gateway would start."""
    sampler = otel.traces_sampler.strip().lower()
    if sampler in _OFF_SAMPLERS:
        return 0.0
    if sampler in _RATIO_SAMPLERS:
        try:
            ratio = float(otel.traces_sampler_arg or "1")
        except ValueError:
            ratio = 1.0  # the SDK falls back to 1.0 too
        return min(max(ratio, 0.0), 1.0) * 100
    return 100.0
