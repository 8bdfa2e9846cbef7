"""`rtask-healthcheck HOST:PORT [SERVICE]`: exit 0 when the gRPC server there reports SERVING, 1 otherwise.

Container health checks run it inside the service's own container, so the image needs no probe binary of its
own; it asks the same `grpc.health.v1` question Envoy asks, so Docker and the edge agree on who is healthy.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING


def check(address: str, service: str = "", timeout_s: float = 2.0) -> str:
    """The status name the server reports for service ("" = the whole server), or the gRPC error code's name."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError as exc:
            return exc.code().name  # type: ignore[no-any-return]
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rtask-healthcheck", description=__doc__.split("\n\n")[0])
    parser.add_argument("address", help="host:port of the gRPC server, e.g. 127.0.0.1:50051")
    parser.add_argument("service", nargs="?", default="", help="a service name; default: the whole server")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the answer (default 2)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    status = check(args.address, args.service, args.timeout)
    print(f"{args.address} {args.service or '(server)'}: {status}")
    return 0 if status == health_pb2.HealthCheckResponse.ServingStatus.Name(SERVING) else 1


if __name__ == "__main__":
    sys.exit(main())
