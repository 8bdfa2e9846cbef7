"""Session fixtures: real embedded PostgreSQL and Valkey, and the full local stack behind Envoy."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis

from services.core import redis_acl
from services.core.config import RedisConfig
from services.core.limits import UserLimits
from services.core.redis_client import create_redis
from services.stack.embedded import postgres_process, postgres_url, valkey_process, wait_for_port, wait_for_postgres
from services.stack.ports import free_port
from services.stack.processes import ManagedProcess
from services.stack.redis_users import RedisAccess, load_functions, logins, password_files, write_acl_file
from services.stack.stack import DEFAULT_REDIS_MAXMEMORY_MB, Stack, StackConfig
from services.stack.valkey_cluster import ValkeyCluster, start_cluster
from tests.limits import OPEN_AUTH_LIMITS, OPEN_LOGIN_ENV
from tests.stack_health import recent_health_events

# Fast hashing in tests; production default is 12.
TEST_BCRYPT_COST = 4
TEST_RECLAIM_IDLE_MS = 3000


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
    """A failed test that used the shared stack carries the stack's recent health events in its report."""
    report: pytest.TestReport = yield
    stack = getattr(item, "funcargs", {}).get("stack")
    if report.failed and isinstance(stack, Stack):
        events = recent_health_events(stack.log_dir)
        if events:
            report.sections.append(("stack health events", events))
    return report


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--keep-logs", action="store_true", help="echo the stack's process logs to the terminal while testing"
    )
    parser.addoption(
        "--redis-cluster",
        action="store_true",
        help="run against a Valkey Cluster (3 primaries, 3 replicas) instead of one Valkey server",
    )
    parser.addoption(
        "--dispatch-shards",
        type=int,
        default=1,
        help="RTASK_DISPATCH_SHARDS of the session's stack (and of the tests' own clients, admin_redis())",
    )


@dataclass
class Stores:
    """One PostgreSQL and one Valkey for the whole session, each a real server process.

    Valkey has the stack's ACL users: redis_url logs in as the operator (tests' own clients may do anything),
    redis_access holds the services' and the workers' logins, which the stack fixture gives its processes.
    With --redis-cluster, Valkey is a cluster (`cluster`; `valkey` is then its first primary) and the URLs are
    cluster URLs: tests open their clients with admin_redis().
    """

    database_url: str
    redis_url: str = field(repr=False)
    redis_access: RedisAccess = field(repr=False)
    postgres: ManagedProcess
    valkey: ManagedProcess
    data_dir: Path
    cluster: ValkeyCluster | None = None
    # RTASK_DISPATCH_SHARDS of the session (--dispatch-shards).
    dispatch_shards: int = 1


def admin_redis(stores: Stores) -> aioredis.Redis:
    """The operator's client of the session's Valkey (a cluster client with --redis-cluster; the session's
    dispatch shards); close it after."""
    return create_redis(RedisConfig(stores.redis_url, dispatch_shards=stores.dispatch_shards))


@pytest.fixture
async def redis(stores: Stores) -> AsyncIterator[aioredis.Redis]:
    """A plain client of the session's Valkey (its URL as given: the operator's login, database 0), closed after
    the test; modules that need another database or a cluster client define their own."""
    client = aioredis.Redis.from_url(stores.redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def single_redis(stores: Stores) -> None:
    """For tests of one Valkey server's own behaviour (restarting it, its databases): skipped on a cluster."""
    if stores.cluster is not None:
        pytest.skip("one Valkey server's behaviour; the cluster's is tested in test_redis_cluster.py")


@pytest.fixture(scope="session")
def stores(request: pytest.FixtureRequest) -> Iterator[Stores]:
    # Not under pytest's temp root: pytest resets that to mode 0700 at every session start, which locks out
    # PostgreSQL's own system user whenever two test sessions overlap.
    data_dir = Path(tempfile.mkdtemp(prefix="rtask-stores-"))
    log_dir = data_dir / "logs"
    pg_port = free_port()
    pg = postgres_process(data_dir, pg_port, log_dir=log_dir, echo=None)
    redis_passwords = password_files(data_dir)
    acl_file = write_acl_file(data_dir, redis_passwords)
    pg.start()
    cluster: ValkeyCluster | None = None
    valkey: ManagedProcess | None = None
    running: Stores | None = None
    try:
        if request.config.getoption("--redis-cluster"):
            cluster = start_valkey_cluster(data_dir, acl_file, redis_passwords)
            valkey, valkey_port = cluster.primaries[0].process, cluster.primaries[0].port
        else:
            valkey_port = free_port()
            valkey = valkey_process(
                data_dir,
                valkey_port,
                log_dir=log_dir,
                echo=None,
                acl_file=acl_file,
                maxmemory_mb=DEFAULT_REDIS_MAXMEMORY_MB,
            )
            valkey.start()
        access = logins(redis_passwords, "127.0.0.1", valkey_port, cluster=cluster is not None)
        assert access.admin is not None
        running = Stores(
            postgres_url(pg_port),
            access.admin.url_with_password(),
            access,
            pg,
            valkey,
            data_dir,
            cluster,
            request.config.getoption("--dispatch-shards"),
        )
        wait_for_postgres(pg, pg_port)
        wait_for_port(valkey, valkey_port)
        if cluster is None:  # start_cluster() loads it on every primary
            load_functions(access.admin)
        yield running
    finally:
        # Tests may replace a store process (restart tests): stop whichever runs now.
        if cluster is not None:
            cluster.stop()
        elif running is not None:
            running.valkey.stop()
        elif valkey is not None:
            valkey.stop()
        pg.stop(grace_s=15, sig=signal.SIGINT)
        shutil.rmtree(data_dir, ignore_errors=True)


def start_valkey_cluster(data_dir: Path, acl_file: Path, passwords: dict[str, Path]) -> ValkeyCluster:
    """3 primaries and 3 replicas with the stack's ACL users, on free loopback ports, formed and in sync."""
    return start_cluster(
        data_dir / "cluster",
        acl_file=acl_file,
        admin_user=redis_acl.USERS[redis_acl.ADMIN].name,
        admin_password=passwords[redis_acl.ADMIN].read_text().strip(),
        log_dir=data_dir / "logs",
        maxmemory_mb=DEFAULT_REDIS_MAXMEMORY_MB,
    )


@pytest.fixture(scope="session")
def stack(stores: Stores, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Stack]:
    """The whole system (1 scheduler, 2 gateways, 3 workers, Envoy) on free ports, shared by the session."""
    config = StackConfig(
        data_dir=tmp_path_factory.mktemp("stack"),
        edge_port=0,
        edge_tls_port=0,
        admin_port=0,
        database_url=stores.database_url,
        redis_access=stores.redis_access,
        bcrypt_cost=TEST_BCRYPT_COST,
        # The default per-user limits, but for what tests of one user's throughput need: a burst for thousands of
        # tasks submitted at once (tests/e2e/test_dashboard.py: 2,000 rows in 40 quick submissions;
        # tests/e2e/test_dashboard_scale.py: 10,000 in 200), and watch streams for 500 watchers of one user
        # (tests/integration/test_watch.py).
        limits=UserLimits(submit_burst=12_000, max_watch_streams=1_000),
        extra_env={
            "RTASK_LOG_LEVEL": os.environ.get("RTASK_LOG_LEVEL", "INFO"),
            # Short retry backoff and reclaim threshold keep lifecycle tests quick; production keeps 1 s / 10 s.
            "RTASK_RETRY_BASE_MS": "100",
            "RTASK_WORKER_RECLAIM_IDLE_MS": str(TEST_RECLAIM_IDLE_MS),
            "RTASK_WORKER_HEARTBEAT_MS": "500",
            # Cluster-wide gauges (queue depth, workers) refreshed often, so metrics tests see them move quickly.
            "RTASK_METRICS_CLUSTER_INTERVAL_MS": "300",
            "RTASK_DISPATCH_SHARDS": str(stores.dispatch_shards),
            **OPEN_LOGIN_ENV,
            # A kind with a large result (tests/integration/test_small_events.py), one that reports what a
            # handler process can see (tests/integration/test_worker_identity.py), and one that reports when it
            # started (tests/integration/test_delayed.py), and those recording their own runs
            # (tests/integration/test_kind_controls.py).
            "RTASK_WORKER_IMPORTS": (
                "tests.integration.bulky_handler,tests.integration.probe_handler,tests.integration.clock_handler,"
                "tests.integration.log_handler,tests.integration.gated_handler"
            ),
        },
        auth_limits=OPEN_AUTH_LIMITS,  # the whole session is one client address (tests/limits.py)
    )
    echo = sys.stderr if request.config.getoption("--keep-logs") else None
    with Stack(config, echo=echo) as running:
        yield running


@pytest.fixture
async def edge(stack: Stack) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to Envoy, the single front door."""
    async with grpc.aio.insecure_channel(stack.edge_address) as channel:
        yield channel


def unique_email(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}@example.com"
