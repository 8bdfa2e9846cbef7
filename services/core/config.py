"""Typed configuration, one frozen dataclass per concern, built from the environment at entry points only."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit


class ConfigError(ValueError):
    """A configuration variable is missing or malformed."""


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from exc


def env_int(name: str, default: int, env: Mapping[str, str] = os.environ) -> int:
    """An integer variable, for entry points assembling settings that have no dataclass of their own."""
    return _int(env, name, default)


def env_float(name: str, default: float, env: Mapping[str, str] = os.environ) -> float:
    """A number variable, for settings assembled from several variables at an entry point."""
    return _float(env, name, default)


def env_bool(name: str, default: bool, env: Mapping[str, str] = os.environ) -> bool:
    """A switch: true/false, 1/0, yes/no or on/off (any case); empty or unset gives the default."""
    raw = env.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in ("true", "1", "yes", "on"):
        return True
    if raw in ("false", "0", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from exc


@dataclass(frozen=True)
class DatabaseConfig:
    """PostgreSQL connection settings (docs/postgresql-ha.md).

    `url` may name several servers (postgresql://user@h1:5432,h2:5432/db?target_session_attrs=read-write): every
    connection, pooled or not, goes to the first that accepts writes, so after a failover new connections reach
    the new primary with no restart.
    """

    url: str
    pool_min_size: int = 2
    pool_max_size: int = 10
    # Where the migrations' session advisory lock is taken ("" = url): a direct server address when `url` goes
    # through a pooler in transaction mode, which cannot keep a session lock across statements.
    direct_url: str = field(default="", repr=False)
    # asyncpg's per-connection cache of named prepared statements (its default, 100); 0 behind a pooler in
    # transaction mode that does not track prepared statements itself.
    statement_cache_size: int = 100
    # The longest one statement may take before the call fails (UNAVAILABLE at the gRPC boundary): a stalled
    # network path never closes a connection by itself, and every caller would wait on it for ever. Below the
    # edge's unary timeout (30 s), so the service answers first.
    command_timeout_ms: int = 15_000
    # The longest opening a connection may take (the pool opens them as calls need them).
    connect_timeout_ms: int = 5_000

    def __post_init__(self) -> None:
        if self.command_timeout_ms <= 0 or self.connect_timeout_ms <= 0:
            raise ConfigError("command_timeout_ms and connect_timeout_ms must be positive")

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> DatabaseConfig:
        url = env.get("DATABASE_URL", "")
        if not url:
            raise ConfigError("DATABASE_URL is required")
        cache = _int(env, "RTASK_DB_STATEMENT_CACHE_SIZE", 100)
        if cache < 0:
            raise ConfigError(f"RTASK_DB_STATEMENT_CACHE_SIZE must be 0 or more, got {cache}")
        return cls(
            url=url,
            pool_min_size=_int(env, "RTASK_DB_POOL_MIN", 2),
            pool_max_size=_int(env, "RTASK_DB_POOL_MAX", 10),
            direct_url=env.get("DATABASE_DIRECT_URL", ""),
            statement_cache_size=cache,
            command_timeout_ms=_int(env, "RTASK_DB_COMMAND_TIMEOUT_MS", 15_000),
            connect_timeout_ms=_int(env, "RTASK_DB_CONNECT_TIMEOUT_MS", 5_000),
        )


# The URL schemes of a cluster, and the scheme redis-py reads for each.
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


@dataclass(frozen=True)
class RedisConfig:
    """Redis-compatible server settings.

    The URL names the server and the ACL user (redis://rtask-worker@host:6379/0); the password comes from a
    file only this process is given (RTASK_REDIS_PASSWORD_FILE), so it is neither in the environment of the
    process nor in any URL that gets printed. A URL that carries its own password is accepted too (external
    servers, tests), but not both at once.

    A Valkey/Redis Cluster is named by the scheme: redis+cluster://user@host:port (rediss+cluster:// with TLS),
    host:port being any one node (the client learns the others from it). The services then use redis-py's
    cluster client and the cluster's key layout (services.core.keys.KeyLayout).
    """

    url: str
    # Connections one process may hold; callers beyond that wait for a free one (up to pool_timeout_s).
    max_connections: int = 64
    pool_timeout_s: float = 5.0
    password: str | None = field(default=None, repr=False)

    @property
    def cluster(self) -> bool:
        """Whether the URL names a cluster (redis+cluster:// or rediss+cluster://)."""
        return urlsplit(self.url).scheme in CLUSTER_SCHEMES

    @property
    def client_url(self) -> str:
        """The URL in the scheme redis-py reads (redis:// or rediss://), for either client."""
        scheme, sep, rest = self.url.partition("://")
        return f"{CLUSTER_SCHEMES.get(scheme, scheme)}{sep}{rest}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> RedisConfig:
        url = env.get("REDIS_URL", "")
        if not url:
            raise ConfigError("REDIS_URL is required")
        scheme = urlsplit(url).scheme
        if scheme not in ("redis", "rediss", "unix", *CLUSTER_SCHEMES):
            raise ConfigError(f"REDIS_URL must start with redis://, rediss:// or redis+cluster://, not {scheme}://")
        password = None
        password_file = env.get("RTASK_REDIS_PASSWORD_FILE", "")
        if password_file:
            if urlsplit(url).password is not None:
                raise ConfigError("REDIS_URL holds a password and RTASK_REDIS_PASSWORD_FILE names one: give only one")
            try:
                with open(password_file, encoding="utf-8") as handle:
                    password = handle.read().strip()
            except OSError as exc:
                raise ConfigError(f"RTASK_REDIS_PASSWORD_FILE cannot be read: {exc}") from exc
            if not password:
                raise ConfigError(f"RTASK_REDIS_PASSWORD_FILE ({password_file}) is empty")
        return cls(url=url, max_connections=_int(env, "RTASK_REDIS_MAX_CONNECTIONS", 64), password=password)


@dataclass(frozen=True)
class AuthConfig:
    """Token and password hashing settings."""

    jwt_secret: bytes
    issuer: str = "resilienttask"
    audience: str = "resilienttask-api"
    token_ttl_s: int = 3600
    bcrypt_cost: int = 12

    def __post_init__(self) -> None:
        if len(self.jwt_secret) < 32:
            raise ConfigError("the JWT secret must be at least 32 bytes")
        if not 4 <= self.bcrypt_cost <= 31:
            raise ConfigError("RTASK_BCRYPT_COST must be between 4 and 31")
        if self.token_ttl_s < 1:
            raise ConfigError("RTASK_TOKEN_TTL_S must be at least 1 second")

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> AuthConfig:
        secret = env.get("RTASK_JWT_SECRET", "")
        secret_file = env.get("RTASK_JWT_SECRET_FILE", "")
        if not secret and secret_file:
            with open(secret_file, encoding="utf-8") as handle:
                secret = handle.read().strip()
        if not secret:
            raise ConfigError("RTASK_JWT_SECRET or RTASK_JWT_SECRET_FILE is required")
        return cls(
            jwt_secret=secret.encode(),
            issuer=env.get("RTASK_JWT_ISSUER", "resilienttask"),
            audience=env.get("RTASK_JWT_AUDIENCE", "resilienttask-api"),
            token_ttl_s=_int(env, "RTASK_TOKEN_TTL_S", 3600),
            bcrypt_cost=_int(env, "RTASK_BCRYPT_COST", 12),
        )


@dataclass(frozen=True)
class ServerConfig:
    """Where a gRPC server listens and how it shuts down."""

    host: str = "127.0.0.1"
    port: int = 0
    shutdown_grace_s: float = 5.0
    health_check_interval_s: float = 1.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ, *, default_port: int = 0) -> ServerConfig:
        return cls(
            host=env.get("RTASK_HOST", "127.0.0.1"),
            port=_int(env, "RTASK_PORT", default_port),
            shutdown_grace_s=_float(env, "RTASK_SHUTDOWN_GRACE_S", 5.0),
            health_check_interval_s=_float(env, "RTASK_HEALTH_INTERVAL_S", 1.0),
        )
