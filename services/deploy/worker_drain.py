"""`rtask-worker-drain`: drain the worker of this container and return once it has (Kubernetes' preStop hook).

It sends SIGUSR1 to the worker (PID 1 of the container by default): the worker takes no new task, lets its
handlers finish for RTASK_WORKER_DRAIN_GRACE_S, hands back what still runs (queued again at once, the attempt
not counted) and stays up, idle. The command watches the worker's health service `resilienttask.worker.drained`
(DRAINED_SERVICE) and exits once it is SERVING, or after --timeout; the kubelet's SIGTERM
that follows the hook then finds nothing left to do. Exit 0 when drained, 1 on timeout or when the worker is gone
(the SIGTERM still drains it).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.worker.worker import DRAINED_SERVICE

SERVING = health_pb2.HealthCheckResponse.SERVING


def wait_drained(address: str, timeout_s: float) -> bool:
    """Watch the worker's drained status (pushed by the server, no polling) until SERVING or timeout_s."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            for reply in stub.Watch(health_pb2.HealthCheckRequest(service=DRAINED_SERVICE), timeout=timeout_s):
                if reply.status == SERVING:
                    return True
        except grpc.RpcError:
            return False
    return False


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rtask-worker-drain", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pid", type=int, default=1, help="the worker's process id (default 1: the container's)")
    parser.add_argument("--address", default="127.0.0.1:50071", help="the worker's gRPC health address")
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds to wait for the drain (default 60; keep it below the pod's terminationGracePeriodSeconds)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        os.kill(args.pid, signal.SIGUSR1)
    except ProcessLookupError:
        print(f"no process {args.pid}: nothing to drain", file=sys.stderr)
        return 1
    drained = wait_drained(args.address, args.timeout)
    print(f"worker {args.address}: {'drained' if drained else 'not drained within the timeout'}")
    return 0 if drained else 1


if __name__ == "__main__":
    sys.exit(main())
