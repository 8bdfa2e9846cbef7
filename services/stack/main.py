"""`rtask-stack`: run the whole system locally (`up`) or wipe its data folder (`wipe`)."""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from services.core.settings import load, refused_at_start, setting
from services.edge.config import AuthLimits
from services.stack.ports import PortTaken
from services.stack.stack import DEFAULT_REDIS_MAXMEMORY_MB, Stack, StackConfig


@dataclass(frozen=True)
class LauncherConfig:
    """The launcher's variables: defaults of its flags, and external stores to use instead of its own."""

    data_dir: str = setting("RTASK_DATA_DIR", ".rtask", "the stack's data folder (`--data-dir`)")
    edge_host: str = setting(
        "RTASK_EDGE_HOST",
        "127.0.0.1",
        "address of the edge's TLS listener (`--listen`); the plaintext one stays on 127.0.0.1",
    )
    tls_names: tuple[str, ...] = setting(
        "RTASK_EDGE_TLS_NAMES",
        (),
        "extra DNS names or IPs in the development server certificate (`--tls-name`)",
        shown_default="none (always `localhost`, `127.0.0.1`, `envoy`)",
    )
    edge_reflection: bool = setting(
        "RTASK_EDGE_REFLECTION", False, "route gRPC server reflection through the edge (`--edge-reflection`)"
    )
    metrics: bool = setting(
        "RTASK_STACK_METRICS", True, "serve Prometheus metrics from the services it starts (off: `--no-metrics`)"
    )
    redis_maxmemory_mb: int = setting(
        "RTASK_REDIS_MAXMEMORY_MB",
        DEFAULT_REDIS_MAXMEMORY_MB,
        "memory of the embedded Valkey before it refuses writes (never evicts; `--redis-maxmemory-mb`)",
    )
    database_url: str = setting(
        "DATABASE_URL", "", "an external PostgreSQL for the stack instead of its embedded one", shown_default="none"
    )
    redis_url: str = setting(
        "REDIS_URL", "", "an external Redis-compatible server instead of the embedded Valkey", shown_default="none"
    )


def _parser(settings: LauncherConfig | None = None) -> argparse.ArgumentParser:
    settings = settings or LauncherConfig()
    parser = argparse.ArgumentParser(prog="rtask-stack", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start every process and stream their logs; Ctrl-C stops them all")
    up.add_argument("--data-dir", type=Path, default=Path(settings.data_dir))
    up.add_argument(
        "--port", type=int, default=8080, help="Envoy's plaintext listener, 127.0.0.1 only (gRPC, grpc-web, dashboard)"
    )
    up.add_argument("--tls-port", type=int, default=8443, help="Envoy's TLS listener (same routes), on --listen")
    up.add_argument(
        "--listen",
        default=settings.edge_host,
        help="address of the TLS listener: 127.0.0.1 (default), or e.g. 0.0.0.0 to serve other machines "
        "[env RTASK_EDGE_HOST]",
    )
    up.add_argument(
        "--tls-name",
        action="append",
        default=list(settings.tls_names),
        help="another DNS name or IP for the server certificate (repeatable) [env RTASK_EDGE_TLS_NAMES, a,b]",
    )
    up.add_argument(
        "--edge-reflection",
        action="store_true",
        default=settings.edge_reflection,
        help="serve gRPC server reflection through the edge (off by default) [env RTASK_EDGE_REFLECTION]",
    )
    up.add_argument("--admin-port", type=int, default=9901, help="Envoy admin, bound to 127.0.0.1")
    up.add_argument("--gateways", type=int, default=2)
    up.add_argument("--schedulers", type=int, default=1)
    up.add_argument("--workers", type=int, default=3)
    up.add_argument("--worker-slots", type=int, default=10, help="tasks each worker runs at once")
    up.add_argument(
        "--no-metrics",
        action="store_true",
        default=not settings.metrics,
        help="do not serve Prometheus metrics from the services (on by default) [env RTASK_STACK_METRICS=off]",
    )
    up.add_argument(
        "--redis-maxmemory-mb",
        type=int,
        default=settings.redis_maxmemory_mb,
        help="memory of the stack's Valkey before it refuses writes (docs/operations.md)",
    )
    wipe = sub.add_parser("wipe", help="delete the data folder (users, tasks, logs, secrets)")
    wipe.add_argument("--data-dir", type=Path, default=Path(settings.data_dir))
    return parser


def _banner(stack: Stack) -> str:
    tls = f"https://{stack.edge_tls_address}"
    tls_label = f"edge, TLS (on {stack.config.edge_host}):"
    return (
        "\nResilientTask is up.\n"
        f"  edge, plaintext (loopback only):    http://localhost:{stack.edge_port}  (gRPC, grpc-web, dashboard)\n"
        f"  {tls_label:<36}{tls}  (trust {stack.ca_file})\n"
        f"  Envoy admin:                        {stack.admin_url}  (stats: /stats/prometheus)\n"
        f"  data folder:                        {stack.data_dir}  (logs in logs/)\n"
        f"{_redis_line(stack)}"
        f"{_metrics_lines(stack)}"
        f"  try: grpcurl -cacert {stack.ca_file} -protoset {stack.protoset} {stack.edge_tls_address} list\n"
        f"       rtask --server {stack.edge_tls_address} --ca-file {stack.ca_file} health\n"
        "  operator role (rtask operator ...): once the user has signed up,\n"
        f"       DATABASE_URL={shlex.quote(stack.database_url)} {sys.executable} -m services.gateway.operators"
        " grant EMAIL\n"
        "  Ctrl-C stops every process.\n"
    )


def _metrics_lines(stack: Stack) -> str:
    """Each service process's Prometheus endpoint (docs/metrics.md)."""
    names = [*stack.names("scheduler"), *stack.names("gateway"), *stack.names("worker")]
    urls = [(name, url) for name in names if (url := stack.metrics_url(name)) is not None]
    if not urls:
        return ""
    lines = [f"  {'metrics, ' + name + ':':<36}{url}\n" for name, url in urls]
    return "".join(lines)


def _redis_line(stack: Stack) -> str:
    """Where an operator logs in to the stack's own Valkey: the URL and the file holding the password."""
    access = stack.redis_access
    if access is None or access.admin is None or access.admin.password_file is None:
        return ""
    return f"  Redis (operator):                   {access.admin.url}  (password in {access.admin.password_file})\n"


def up(args: argparse.Namespace, settings: LauncherConfig, auth_limits: AuthLimits) -> int:
    config = StackConfig(
        data_dir=args.data_dir,
        edge_port=args.port,
        edge_tls_port=args.tls_port,
        edge_host=args.listen,
        tls_names=tuple(name.strip() for name in args.tls_name),
        edge_reflection=args.edge_reflection,
        admin_port=args.admin_port,
        gateways=args.gateways,
        schedulers=args.schedulers,
        workers=args.workers,
        worker_slots=args.worker_slots,
        metrics=not args.no_metrics,
        database_url=settings.database_url or None,
        redis_url=settings.redis_url or None,
        redis_maxmemory_mb=args.redis_maxmemory_mb,
        auth_limits=auth_limits,
    )
    stopping = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    stack = Stack(config, echo=sys.stdout)
    try:
        stack.start()
    except PortTaken as exc:
        print(f"cannot start: {exc}", file=sys.stderr, flush=True)
        return 3
    try:
        print(_banner(stack), flush=True)
        reported: set[str] = set()
        while not stopping.wait(1.0):
            for name, proc in stack.processes.items():
                if not proc.alive() and name not in reported:
                    reported.add(name)
                    print(f"{name} exited (code {proc.proc and proc.proc.returncode}); see {proc.log_path}", flush=True)
        return 0
    finally:
        print("stopping every process...", flush=True)
        stack.stop()
        print("stopped.", flush=True)


def wipe(args: argparse.Namespace) -> int:
    path: Path = args.data_dir
    if path.exists():
        shutil.rmtree(path)
        print(f"removed {path}")
    else:
        print(f"nothing to remove at {path}")
    return 0


def main() -> None:
    with refused_at_start("rtask-stack"):
        settings = load(LauncherConfig, os.environ)
        auth_limits = load(AuthLimits, os.environ)
    args = _parser(settings).parse_args()
    sys.exit(up(args, settings, auth_limits) if args.command == "up" else wipe(args))


if __name__ == "__main__":
    main()
