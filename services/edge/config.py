"""What differs between deployments of the edge, as one frozen dataclass the renderer turns into Envoy config."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from services.core.config import AuthConfig

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

    max_tokens: int
    tokens_per_fill: int
    fill_interval_s: float

    def __post_init__(self) -> None:
        if self.max_tokens < 1 or self.tokens_per_fill < 1 or self.fill_interval_s <= 0:
            raise ValueError(f"invalid rate limit {self}")


# One HTTP/2 flow-control window: bodies beyond it always arrive in several reads.
MIN_REQUEST_LIMIT_BYTES = 64 * 1024

# Generous by default: a test session signs up hundreds of users; bcrypt is the real brake on login floods.
DEFAULT_AUTH_RATE_LIMIT = RateLimit(max_tokens=500, tokens_per_fill=100, fill_interval_s=1.0)


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
    # Browser origins allowed by CORS; empty means none (same-origin pages need no CORS).
    allowed_origins: Sequence[str] = field(default_factory=tuple)
    # The dashboard's built files, served at /; None answers / with a short "not built" 404.
    dashboard_dir: str | None = None
    jwt_issuer: str = AuthConfig.issuer
    user_audience: str = AuthConfig.audience
    # Envoy's default (60 s) would accept a token a minute after it expired; the services allow none.
    jwt_clock_skew_s: int = 5
    auth_rate_limit: RateLimit = DEFAULT_AUTH_RATE_LIMIT
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

    def __post_init__(self) -> None:
        if self.discovery not in (STATIC, STRICT_DNS):
            raise ValueError(f"discovery must be {STATIC} or {STRICT_DNS}, got {self.discovery!r}")
        if not self.gateways:
            raise ValueError("the edge needs at least one gateway endpoint")
        if self.jwt_clock_skew_s < 0:
            raise ValueError("the JWT clock skew must be >= 0")
        if self.max_request_bytes < MIN_REQUEST_LIMIT_BYTES:
            raise ValueError(f"max_request_bytes must be at least {MIN_REQUEST_LIMIT_BYTES}")
        if self.tls is not None and self.tls.port == self.listen_port and self.tls.port != 0:
            raise ValueError(f"the TLS and plaintext listeners cannot share port {self.listen_port}")
        timeouts = (self.unary_timeout_s, self.stream_idle_timeout_s, self.health_interval_s, self.health_watch_max_s)
        if min(timeouts) <= 0:
            raise ValueError("timeouts and intervals must be positive")
