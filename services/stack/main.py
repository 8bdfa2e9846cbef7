"""`rtask-stack`: run the whole system locally (`up`) or wipe its data folder (`wipe`)."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import threading
from pathlib import Path

from services.edge.config import AuthLimits
from services.stack.stack import Stack, StackConfig

DEFAULT_DATA_DIR = Path(os.environ.get("RTASK_DATA_DIR", ".rtask"))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rtask-stack", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start every process and stream their logs; Ctrl-C stops them all")
    up.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    up.add_argument("--port", type=int, default=8080, help="Envoy listener (gRPC, grpc-web, dashboard)")
    up.add_argument("--admin-port", type=int, default=9901, help="Envoy admin, bound to 127.0.0.1")
    up.add_argument("--gateways", type=int, default=2)
    up.add_argument("--schedulers", type=int, default=1)
    up.add_argument("--workers", type=int, default=3)
    up.add_argument("--worker-slots", type=int, default=10, help="tasks each worker runs at once")
    wipe = sub.add_parser("wipe", help="delete the data folder (users, tasks, logs, secret)")
    wipe.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    return parser


def _banner(stack: Stack) -> str:
    edge = stack.edge_address
    return (
        "\nResilientTask is up.\n"
        f"  edge (gRPC + grpc-web + dashboard): http://localhost:{stack.edge_port}\n"
        f"  Envoy admin:                        {stack.admin_url}  (stats: /stats/prometheus)\n"
        f"  data folder:                        {stack.data_dir}  (logs in logs/)\n"
        f"  try: grpcurl -plaintext {edge} list\n"
        f"       grpcurl -plaintext {edge} grpc.health.v1.Health/Check\n"
        "  Ctrl-C stops every process.\n"
    )


def up(args: argparse.Namespace) -> int:
    config = StackConfig(
        data_dir=args.data_dir,
        edge_port=args.port,
        admin_port=args.admin_port,
        gateways=args.gateways,
        schedulers=args.schedulers,
        workers=args.workers,
        worker_slots=args.worker_slots,
        database_url=os.environ.get("DATABASE_URL") or None,
        redis_url=os.environ.get("REDIS_URL") or None,
        auth_limits=AuthLimits.from_env(os.environ),
    )
    stopping = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    stack = Stack(config, echo=sys.stdout)
    try:
        stack.start()
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
    args = _parser().parse_args()
    sys.exit(up(args) if args.command == "up" else wipe(args))


if __name__ == "__main__":
    main()
