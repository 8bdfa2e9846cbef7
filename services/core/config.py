"""Typed configuration, one frozen dataclass per concern, built from the environment at entry points only."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from services.core.keys import MAX_DISPATCH_SHARDS
from services.core.settings import ConfigError, setting

__all__ = ["CLUSTER_SCHEMES", "AuthConfig", "ConfigError", "DatabaseConfig", "LogConfig", "RedisConfig", "ServerConfig"]


@dataclass(frozen=True)
class DatabaseConfig:
    """PostgreSQL connection settings (docs/postgresql-ha.md).

    `url` may name several servers (postgresql://user@h1:5432,h2:5432/db?target_session_attrs=read-write): every
    connection, pooled or not, goes to the first that accepts writes, so after a failover new connections reach
    the new primary with no restart.
    """

    url: str = setting(
        "DATABASE_URL",
        help="PostgreSQL URL; several servers with `target_session_attrs=read-write` follow a failover "
        "([docs/postgresql-ha.md](docs/postgresql-ha.md))",
        shown_default="`make up`: its embedded server",
    )
    pool_min_size: int = setting("RTASK_DB_POOL_MIN", 2, "connections the pool keeps open")
    pool_max_size: int = setting("RTASK_DB_POOL_MAX", 10, "connections the pool may open")
    direct_url: str = setting(
        "DATABASE_DIRECT_URL",
        "",
        "where start-up migrations take their session lock, when `DATABASE_URL` goes through a transaction-mode "
        "pooler ([docs/postgresql-ha.md](docs/postgresql-ha.md))",
        shown_default="`DATABASE_URL`",
        repr=False,
    )
    statement_cache_size: int = setting(
        "RTASK_DB_STATEMENT_CACHE_SIZE",
        100,
        "asyncpg's prepared statements per connection; 0 behind a pooler that does not track them",
    )
    # Below the edge's unary timeout (30 s), so the service answers first.
    command_timeout_ms: int = setting(
        "RTASK_DB_COMMAND_TIMEOUT_MS",
        15_000,
        "the longest one SQL statement may take before the call fails with `UNAVAILABLE`: a stalled network path "
        "never closes a connection by itself (below the edge's 30 s unary timeout)",
    )
    connect_timeout_ms: int = setting(
        "RTASK_DB_CONNECT_TIMEOUT_MS", 5_000, "the longest opening a PostgreSQL connection may take"
    )

    def __post_init__(self) -> None:
        if self.statement_cache_size < 0:
            raise ConfigError(f"RTASK_DB_STATEMENT_CACHE_SIZE must be 0 or more, got {self.statement_cache_size}")
        if self.command_timeout_ms <= 0 or self.connect_timeout_ms <= 0:
            raise ConfigError("command_timeout_ms and connect_timeout_ms must be positive")


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

    url: str = setting(
        "REDIS_URL",
        help="Redis-compatible server URL naming the process's ACL user (`redis://rtask-worker@host:6379/0`; see "
        "[docs/operations.md](docs/operations.md)); a Valkey/Redis Cluster as "
        "`redis+cluster://rtask-worker@any-node:7000/0` (`rediss+cluster://` with TLS; "
        '[docs/scaling.md](docs/scaling.md), "Valkey Cluster")',
        shown_default="`make up`: its embedded server",
    )
    # Callers beyond max_connections wait for a free one, up to pool_timeout_s.
    max_connections: int = setting(
        "RTASK_REDIS_MAX_CONNECTIONS", 64, "Redis connections one process may hold; a burst beyond waits for a free one"
    )
    pool_timeout_s: float = setting(
        "RTASK_REDIS_POOL_TIMEOUT_S", 5.0, "how long a call waits for a free Redis connection before it fails"
    )
    password: str | None = setting(
        "RTASK_REDIS_PASSWORD_FILE",
        None,
        "a file holding the Redis user's password (a password inside `REDIS_URL` works too, not both)",
        from_file=True,
        shown_default="`make up`: generated into `.rtask/redis/<role>.password` (mode 0600)",
        repr=False,
    )
    dispatch_shards: int = setting(
        "RTASK_DISPATCH_SHARDS",
        1,
        "shards of each task kind's dispatch streams, so one busy kind spreads over a cluster's nodes; the same in "
        'every gateway, scheduler and worker ([docs/scaling.md](docs/scaling.md), "Valkey Cluster")',
    )

    def __post_init__(self) -> None:
        if not 1 <= self.dispatch_shards <= MAX_DISPATCH_SHARDS:
            raise ConfigError(f"RTASK_DISPATCH_SHARDS must be 1 to {MAX_DISPATCH_SHARDS}, got {self.dispatch_shards}")
        scheme = urlsplit(self.url).scheme
        if scheme not in ("redis", "rediss", "unix", *CLUSTER_SCHEMES):
            raise ConfigError(f"REDIS_URL must start with redis://, rediss:// or redis+cluster://, not {scheme}://")
        if self.password is not None and urlsplit(self.url).password is not None:
            raise ConfigError("REDIS_URL holds a password and RTASK_REDIS_PASSWORD_FILE names one: give only one")

    @property
    def cluster(self) -> bool:
        """Whether the URL names a cluster (redis+cluster:// or rediss+cluster://)."""
        return urlsplit(self.url).scheme in CLUSTER_SCHEMES

    @property
    def client_url(self) -> str:
        """The URL in the scheme redis-py reads (redis:// or rediss://), for either client."""
        scheme, sep, rest = self.url.partition("://")
        return f"{CLUSTER_SCHEMES.get(scheme, scheme)}{sep}{rest}"


@dataclass(frozen=True)
class AuthConfig:
    """Token and password hashing settings."""

    jwt_secret: bytes = setting(
        "RTASK_JWT_SECRET",
        help="the user key: HS256 secret (at least 32 bytes) of user tokens; or RTASK_JWT_SECRET_FILE, a file "
        "holding it",
        file_env="RTASK_JWT_SECRET_FILE",
        shown_default="`make up`: generated into `.rtask/jwt_secret` (mode 0600)",
        repr=False,
    )
    issuer: str = setting("RTASK_JWT_ISSUER", "resilienttask", "the `iss` of every token issued and accepted")
    audience: str = setting("RTASK_JWT_AUDIENCE", "resilienttask-api", "the `aud` of user tokens")
    token_ttl_s: int = setting("RTASK_TOKEN_TTL_S", 3600, "access token lifetime, seconds")
    bcrypt_cost: int = setting("RTASK_BCRYPT_COST", 12, "bcrypt cost of password hashes")

    def __post_init__(self) -> None:
        if len(self.jwt_secret) < 32:
            raise ConfigError("the JWT secret must be at least 32 bytes")
        if not 4 <= self.bcrypt_cost <= 31:
            raise ConfigError("RTASK_BCRYPT_COST must be between 4 and 31")
        if self.token_ttl_s < 1:
            raise ConfigError("RTASK_TOKEN_TTL_S must be at least 1 second")


@dataclass(frozen=True)
class ServerConfig:
    """Where a gRPC server listens and how it shuts down."""

    host: str = setting("RTASK_HOST", "127.0.0.1", "listen address of the process's gRPC server")
    port: int = setting(
        "RTASK_PORT", 0, "listen port of the gRPC server", shown_default="gateway 50051, scheduler 50061, worker 50071"
    )
    shutdown_grace_s: float = setting(
        "RTASK_SHUTDOWN_GRACE_S", 5.0, "in-flight calls allowed to finish on SIGTERM, seconds"
    )
    health_check_interval_s: float = setting(
        "RTASK_HEALTH_INTERVAL_S", 1.0, "how often the process checks its stores to answer the gRPC health service"
    )


@dataclass(frozen=True)
class LogConfig:
    """How a process names itself and how much it logs."""

    instance: str = setting(
        "RTASK_INSTANCE",
        "",
        "the process's name in its log lines and spans (`make up` sets gateway-1, worker-2, ...)",
        shown_default="the role (gateway, scheduler, worker)",
    )
    level: str = setting(
        "RTASK_LOG_LEVEL",
        "INFO",
        "log level (JSON lines on stderr; with tracing on they carry `trace_id`, and a worker's lines about a task "
        "`task_id`)",
    )
