"""The whole system on one machine: embedded stores, scheduler(s), gateways, workers and Envoy.

Used by `make up` (rtask-stack up) and by the integration-test fixtures.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.core.config import AuthConfig
from services.core.limits import UserLimits
from services.core.settings import load
from services.core.tracing import OtelConfig
from services.core.worker_credentials import WorkerKeyConfig
from services.edge.certs import DEFAULT_NAMES, TlsFiles, ensure_dev_tls
from services.edge.config import (
    AuthLimits,
    EdgeConfig,
    Endpoint,
    TlsListener,
    trace_collector,
    trace_sampling_percent,
)
from services.edge.launch import JWKS_FILE, envoy_argv, write_edge_files
from services.edge.protoset import PROTOSET_FILE, write_protoset
from services.stack.embedded import (
    postgres_process,
    postgres_url,
    valkey_process,
    wait_for_port,
    wait_for_postgres,
)
from services.stack.ports import ensure_free, free_port
from services.stack.processes import ManagedProcess
from services.stack.redis_users import RedisAccess, load_functions, logins, password_files, write_acl_file

SECRET_FILE = "jwt_secret"
# The worker key (schedulers only) and the enrolment secret (schedulers and workers): see worker_credentials.
WORKER_KEY_FILE = "worker_key"
ENROLMENT_FILE = "worker_enrolment_secret"
# Secret variables never passed on from the environment the stack was started in: each process gets the
# files its role needs, and only those.
SECRET_VARIABLES = (
    "RTASK_JWT_SECRET",
    "RTASK_JWT_SECRET_FILE",
    "RTASK_WORKER_KEY",
    "RTASK_WORKER_KEY_FILE",
    "RTASK_WORKER_ENROLMENT_SECRET",
    "RTASK_WORKER_ENROLMENT_SECRET_FILE",
)
# Memory the stack's own Valkey may use before it refuses writes (docs/operations.md, "Redis memory").
DEFAULT_REDIS_MAXMEMORY_MB = 1024
TLS_DIR = "tls"
LOOPBACK = "127.0.0.1"
# Addresses that mean "every interface": no certificate can name them.
WILDCARDS = frozenset({"0.0.0.0", "::"})
# The dashboard's build output, served by Envoy at / when it exists.
DASHBOARD_DIST = Path(__file__).resolve().parents[2] / "clients" / "web" / "dist"


@dataclass(frozen=True)
class StackConfig:
    """How many of each process to run, where data lives, which ports to use (0 = pick a free one)."""

    data_dir: Path
    # The plaintext listener, always on loopback: development tools and the dashboard at http://localhost.
    edge_port: int = 8080
    # The TLS listener (certificate from the development CA in <data_dir>/tls), on edge_host.
    edge_tls_port: int = 8443
    # Where the TLS listener binds: loopback unless asked (`--listen 0.0.0.0`); the plaintext one never moves.
    edge_host: str = LOOPBACK
    # Extra names (DNS or IP) the server certificate carries, e.g. this machine's name when listening wider.
    tls_names: tuple[str, ...] = ()
    # Serve server reflection through the edge (off: the services' own ports still offer it).
    edge_reflection: bool = False
    admin_port: int = 9901
    gateways: int = 2
    schedulers: int = 1
    workers: int = 3
    worker_slots: int = 10
    database_url: str | None = None
    # An external server: one URL for every process (its users are the operator's), or one login per role.
    redis_url: str | None = None
    redis_access: RedisAccess | None = None
    redis_maxmemory_mb: int = DEFAULT_REDIS_MAXMEMORY_MB
    bcrypt_cost: int = 12
    extra_env: dict[str, str] = field(default_factory=dict)
    # More environment for single processes, by name ("gateway-1", "worker-2"), over extra_env: e.g. one
    # process's DATABASE_URL through a proxy a test can stall.
    process_env: dict[str, dict[str, str]] = field(default_factory=dict)
    allowed_origins: tuple[str, ...] = ()
    # Envoy's per-address buckets for Login and Signup; the gateways' per-email and hash-queue limits come
    # from RTASK_LOGIN_* / RTASK_HASH_* in the environment (or extra_env).
    auth_limits: AuthLimits = field(default_factory=AuthLimits)
    dashboard_dir: Path | None = DASHBOARD_DIST
    # Per-user limits for the gateways and schedulers; None: theirs (the defaults, or RTASK_LIMIT_* as set).
    limits: UserLimits | None = None
    # Every service process serves Prometheus metrics at http://127.0.0.1:<its own free port>/metrics.
    metrics: bool = True


def ensure_secret(data_dir: Path, name: str = SECRET_FILE) -> Path:
    """Generate a development secret once (mode 0600); later starts reuse it."""
    path = data_dir / name
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(48))
    return path


def wait_serving(address: str, timeout_s: float = 60.0, service: str = "") -> None:
    """Block until the gRPC health check at address answers SERVING."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError as exc:
                last = exc
            time.sleep(0.05)
    raise TimeoutError(f"{address} not SERVING after {timeout_s}s (last error: {last})")


class Stack:
    """Starts, supervises and stops every process of the local deployment."""

    def __init__(self, config: StackConfig, echo: IO[str] | None = None) -> None:
        self.config = config
        self.echo = echo
        self.data_dir = config.data_dir.resolve()
        self.log_dir = self.data_dir / "logs"
        self.processes: dict[str, ManagedProcess] = {}
        self.ports: dict[str, int] = {}
        # Each service process's /metrics port (loopback), kept across restarts like its gRPC port.
        self.metrics_ports: dict[str, int] = {}
        self.process_env = {name: dict(env) for name, env in config.process_env.items()}
        self.database_url = config.database_url or ""
        # Redis: the stack's own Valkey (ACL users, passwords generated once into the data folder), unless given.
        self.redis_access = config.redis_access or (RedisAccess.shared(config.redis_url) if config.redis_url else None)
        self._redis_password_files = password_files(self.data_dir) if self.redis_access is None else {}
        # Ports handed out before their process binds them (Envoy binds last), so none is handed out twice.
        self._given = {config.edge_port, config.edge_tls_port, config.admin_port} - {0}
        self.edge_port = config.edge_port or self._free_port()
        self.edge_tls_port = config.edge_tls_port or self._free_port()
        self.admin_port = config.admin_port or self._free_port()
        self.secret_file = ensure_secret(self.data_dir)
        self.worker_key_file = ensure_secret(self.data_dir, WORKER_KEY_FILE)
        self.enrolment_file = ensure_secret(self.data_dir, ENROLMENT_FILE)
        self.tls = ensure_dev_tls(self.data_dir / TLS_DIR, self.tls_names())
        self.protoset = write_protoset(self.data_dir / PROTOSET_FILE)

    # -- addresses --------------------------------------------------------------------------
    @property
    def edge_address(self) -> str:
        """The plaintext listener (loopback only)."""
        return f"{LOOPBACK}:{self.edge_port}"

    @property
    def edge_tls_address(self) -> str:
        """The TLS listener as a client on this machine dials it (a name its certificate carries)."""
        host = self.config.edge_host
        return f"{'localhost' if host == LOOPBACK or host in WILDCARDS else host}:{self.edge_tls_port}"

    @property
    def ca_file(self) -> Path:
        """The development CA's certificate: what clients trust to reach the TLS listener."""
        return self.tls.ca_cert

    def tls_names(self) -> list[str]:
        """The names the server certificate carries: this machine, the compose service, and any asked for."""
        host = self.config.edge_host
        extra = [host] if host not in WILDCARDS and host != LOOPBACK else []
        return list(dict.fromkeys([*DEFAULT_NAMES, *extra, *self.config.tls_names]))

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    def _free_port(self) -> int:
        """A free port that no other process of this stack was given."""
        while (port := free_port()) in self._given:
            continue
        self._given.add(port)
        return port

    def metrics_url(self, name: str) -> str | None:
        """Where the service process `name` serves Prometheus metrics (None: metrics off)."""
        port = self.metrics_ports.get(name)
        return f"http://{LOOPBACK}:{port}/metrics" if port else None

    def names(self, role: str) -> list[str]:
        return sorted(n for n in self.processes if n.startswith(f"{role}-"))

    @property
    def jwt_secret(self) -> bytes:
        return self.secret_file.read_text().strip().encode()

    @property
    def worker_key(self) -> bytes:
        return self.worker_key_file.read_text().strip().encode()

    @property
    def enrolment_secret(self) -> bytes:
        return self.enrolment_file.read_text().strip().encode()

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._check_ports()
        try:
            self._start_stores()
            for i in range(1, self.config.schedulers + 1):
                self._add_service(f"scheduler-{i}", "services.scheduler.main")
            for i in range(1, self.config.gateways + 1):
                self._add_service(f"gateway-{i}", "services.gateway.main")
            for name in [*self.names("scheduler"), *self.names("gateway")]:
                self.processes[name].start()
            for name in [*self.names("scheduler"), *self.names("gateway")]:
                self._wait_service(name)
            self._start_envoy()
            workers = [self._add_worker(f"worker-{i}") for i in range(1, self.config.workers + 1)]
            for proc in workers:
                proc.start()
            for proc in workers:
                self._wait_service(proc.name)
            self.write_state()
        except BaseException:
            self.stop()
            raise

    def _check_ports(self) -> None:
        """Refuse to start when a port asked for is taken (say, by a stale stack): its process would answer the
        health checks and the stack would look up while its own Envoy failed to bind."""
        for what, host, port in (
            ("edge", LOOPBACK, self.config.edge_port),
            ("TLS edge", self.config.edge_host, self.config.edge_tls_port),
            ("Envoy admin", LOOPBACK, self.config.admin_port),
        ):
            if port:
                ensure_free(host, port, what)

    def _start_stores(self) -> None:
        if not self.database_url:
            port = self._free_port()
            proc = postgres_process(self.data_dir, port, log_dir=self.log_dir, echo=self.echo)
            self._launch("postgres", proc, port)
            self.database_url = postgres_url(port)
        if self.redis_access is None:
            port = self._free_port()
            acl_file = write_acl_file(self.data_dir, self._redis_password_files)
            proc = valkey_process(
                self.data_dir,
                port,
                log_dir=self.log_dir,
                echo=self.echo,
                acl_file=acl_file,
                maxmemory_mb=self.config.redis_maxmemory_mb,
            )
            self._launch("valkey", proc, port)
            self.redis_access = logins(self._redis_password_files, "127.0.0.1", port)
            assert self.redis_access.admin is not None
            load_functions(self.redis_access.admin)

    def _launch(self, name: str, proc: ManagedProcess, port: int) -> None:
        self.processes[name] = proc
        self.ports[name] = port
        proc.start()
        if name == "postgres":
            wait_for_postgres(proc, port)
        else:
            wait_for_port(proc, port)

    def redis_env(self, role: str) -> dict[str, str]:
        """The Redis login of one role ("services" or "worker"): a URL without secrets and its password file."""
        access = self.redis_access
        if access is None:  # not started yet: the stack's own Valkey, whose port is not chosen yet
            return {"REDIS_URL": "", "RTASK_REDIS_PASSWORD_FILE": str(self._redis_password_files[role])}
        return (access.worker if role == "worker" else access.services).env()

    def role_secrets(self, role: str) -> dict[str, str]:
        """The secret files a role holds: the user key for gateways, the worker key and the enrolment secret
        for schedulers, only the enrolment secret for workers."""
        if role == "gateway":
            return {"RTASK_JWT_SECRET_FILE": str(self.secret_file)}
        if role == "scheduler":
            return {
                "RTASK_WORKER_KEY_FILE": str(self.worker_key_file),
                "RTASK_WORKER_ENROLMENT_SECRET_FILE": str(self.enrolment_file),
            }
        if role == "worker":
            return {"RTASK_WORKER_ENROLMENT_SECRET_FILE": str(self.enrolment_file)}
        return {}

    def service_env(self, port: int, role: str = "gateway", metrics_port: int = 0) -> dict[str, str]:
        """The environment of one process of `role` ("gateway", "scheduler" or "worker").

        With metrics on, it serves them on loopback at metrics_port (0: a free one, printed by the process).
        """
        env = {k: v for k, v in os.environ.items() if k not in SECRET_VARIABLES}
        # An external server's password file, if the caller names one, passes through to every process.
        env.update(self.redis_env("worker" if role == "worker" else "services"))
        env.update(
            {
                "DATABASE_URL": self.database_url,
                **self.role_secrets(role),
                "RTASK_BCRYPT_COST": str(self.config.bcrypt_cost),
                "RTASK_PORT": str(port),
                "RTASK_HOST": "127.0.0.1",
                # Workers go straight to the schedulers (added before them): through the edge every message
                # of their stream would take two more hops.
                "RTASK_SCHEDULER_ADDR": ",".join(self.address(n) for n in self.names("scheduler")),
                "RTASK_WORKER_SLOTS": str(self.config.worker_slots),
                "PYTHONUNBUFFERED": "1",
            }
        )
        if self.config.metrics:
            env.update({"RTASK_METRICS_PORT": str(metrics_port), "RTASK_METRICS_HOST": LOOPBACK})
        if self.config.limits is not None:
            env.update(self.config.limits.to_env())
        env.update(self.config.extra_env)
        if role == "worker":
            env.pop("DATABASE_URL", None)  # workers never touch PostgreSQL
        return env

    def _add_service(self, name: str, module: str) -> ManagedProcess:
        # Port 0: the process binds a free port and announces it (_wait_service reads it). A gateway's or a
        # scheduler's restart takes its gRPC port again, as Envoy's endpoints and the workers' scheduler list
        # name it; nothing names a worker's port or a metrics port, so those are chosen afresh (a port given
        # up by a killed process may be in use by the time it restarts).
        port = self.ports.get(name, 0) if not name.startswith("worker-") else 0
        if self.config.metrics:
            self.metrics_ports[name] = 0
        env = self.service_env(port, role=name.split("-")[0], metrics_port=self.metrics_ports.get(name, 0))
        env.update(self.process_env.get(name, {}))
        env["RTASK_INSTANCE"] = name
        proc = ManagedProcess(name, [sys.executable, "-m", module], log_dir=self.log_dir, env=env, echo=self.echo)
        self.processes[name] = proc
        self.ports[name] = port
        return proc

    def _wait_service(self, name: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        proc = self.processes[name]
        if not self.ports.get(name):
            self.ports[name] = self._announced_port(proc, "port", deadline)
        if self.config.metrics and not self.metrics_ports.get(name):
            self.metrics_ports[name] = self._announced_port(proc, "metrics", deadline)
        while time.monotonic() < deadline:
            if not proc.alive():
                raise RuntimeError(f"{name} exited early; see {proc.log_path}")
            try:
                wait_serving(self.address(name), timeout_s=0.5)
                return
            except TimeoutError:
                continue
        raise TimeoutError(f"{name} not SERVING after {timeout_s}s; see {proc.log_path}")

    @staticmethod
    def _announced_port(proc: ManagedProcess, word: str, deadline: float) -> int:
        value = proc.wait_announced(word, max(0.0, deadline - time.monotonic()))
        if value is None:
            raise RuntimeError(f"{proc.name} did not say its {word} port; see {proc.log_path}")
        return int(value.rsplit(":", 1)[-1])

    def _add_worker(self, name: str) -> ManagedProcess:
        proc = self._add_service(name, "services.worker.main")
        # A fresh id per process: a restarted worker is a new consumer, never the dead one's twin.
        proc.env["RTASK_WORKER_ID"] = f"{name}-{secrets.token_hex(3)}"
        return proc

    def start_worker(self, name: str, env: dict[str, str] | None = None) -> ManagedProcess:
        """Start a worker (again); env, when given, is its own environment over the stack's from now on."""
        if env is not None:
            self.process_env[name] = dict(env)
        proc = self._add_worker(name)
        proc.start()
        self._wait_service(name)
        self.write_state()
        return proc

    def restart(self, name: str) -> None:
        """Start a stopped or killed service again on the same port."""
        if name.startswith("worker-"):
            self.start_worker(name)
            return
        module = {"gateway": "services.gateway.main", "scheduler": "services.scheduler.main"}[name.split("-")[0]]
        self._add_service(name, module).start()
        self._wait_service(name)
        self.write_state()

    def relaunch(self, name: str) -> None:
        """Start a stopped or killed store ("postgres", "valkey") or "envoy" again: same command line, port, data."""
        old = self.processes[name]
        if old.alive():
            raise RuntimeError(f"{name} is still running; stop or kill it first")
        fresh = ManagedProcess(
            name, old.argv, log_dir=self.log_dir, env=old.env, echo=self.echo, user=old.user, cwd=old.cwd
        )
        self.processes[name] = fresh
        fresh.start()
        if name == "postgres":
            wait_for_postgres(fresh, self.ports[name])
        else:
            wait_for_port(fresh, self.ports[name], timeout_s=60)
        if name == "envoy":
            wait_serving(self.edge_address, timeout_s=30)
        self.write_state()

    def write_state(self) -> None:
        """Record pids and ports in the data folder, for operators and for the shutdown test."""
        state: dict[str, object] = {
            "edge": self.edge_address,
            "edge_tls": f"{self.config.edge_host}:{self.edge_tls_port}",
            "ca_file": str(self.ca_file),
            "protoset": str(self.protoset),
            "admin": self.admin_url,
            "processes": {
                n: {"pid": p.pid, "port": self.ports.get(n), "metrics_port": self.metrics_ports.get(n)}
                for n, p in self.processes.items()
            },
        }
        access = self.redis_access
        if access is not None and access.worker.password_file is not None:
            # Where `rtask worker` finds its login: the URL names the user, the password stays in its file.
            state["redis"] = {"worker": access.worker.env()}
        (self.data_dir / "stack.json").write_text(json.dumps(state, indent=2))

    def service_auth(self) -> AuthConfig:
        """The token settings (secret, issuer, audience) the services read from their environment."""
        return load(AuthConfig, self.service_env(0, "gateway"))

    def worker_keys(self) -> WorkerKeyConfig:
        """The worker key and enrolment secret the schedulers read from their environment."""
        return load(WorkerKeyConfig, self.service_env(0, "scheduler"))

    def edge_config(self) -> EdgeConfig:
        dashboard = self.config.dashboard_dir
        auth = self.service_auth()  # the edge verifies exactly what the services issue
        # Where and how often the services trace (OTEL_* passed on): Envoy does too.
        otel = load(OtelConfig, self.service_env(0))
        return EdgeConfig(
            listen_port=self.edge_port,
            admin_port=self.admin_port,
            gateways=[Endpoint("127.0.0.1", self.ports[n]) for n in self.names("gateway")],
            listen_address=LOOPBACK,
            tls=self.tls_listener(self.tls),
            public_reflection=self.config.edge_reflection,
            allowed_origins=self.config.allowed_origins
            or tuple(
                f"{scheme}://{host}:{port}"
                for scheme, port in (("http", self.edge_port), ("https", self.edge_tls_port))
                for host in ("localhost", LOOPBACK)
            ),
            jwks_path=str(self.data_dir / JWKS_FILE),
            dashboard_dir=str(dashboard) if dashboard is not None and dashboard.is_dir() else None,
            auth_limits=self.config.auth_limits,
            jwt_issuer=auth.issuer,
            user_audience=auth.audience,
            trace_collector=trace_collector(otel),
            trace_sampling_percent=trace_sampling_percent(otel),
        )

    def tls_listener(self, files: TlsFiles) -> TlsListener:
        return TlsListener(
            port=self.edge_tls_port,
            cert_chain_path=str(files.server_cert),
            private_key_path=str(files.server_key),
            address=self.config.edge_host,
        )

    def _start_envoy(self) -> None:
        path = write_edge_files(self.data_dir, self.edge_config(), self.service_auth().jwt_secret)
        proc = ManagedProcess("envoy", envoy_argv(path), log_dir=self.log_dir, echo=self.echo)
        self.processes["envoy"] = proc
        self.ports["envoy"] = self.edge_port
        proc.start()
        wait_for_port(proc, self.edge_port)
        wait_serving(self.edge_address, timeout_s=30)

    def stop(self) -> None:
        """Stop in reverse dependency order: workers, envoy, gateways, schedulers, stores."""
        order = [*self.names("worker"), "envoy", *self.names("gateway"), *self.names("scheduler"), "valkey", "postgres"]
        for name in order:
            proc = self.processes.get(name)
            if proc is not None:
                # PostgreSQL's SIGTERM waits for clients to leave; SIGINT is its fast, clean shutdown.
                proc.stop(grace_s=15, sig=signal.SIGINT) if name == "postgres" else proc.stop(grace_s=10)

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
