"""`python -m services.edge.render`: write the compose or Kubernetes variant of the edge config, or a JWKS.

The JWKS holds the secret, so it is written where Envoy runs, at start-up, never committed: the config
only names its path.

    python -m services.edge.render compose --out envoy/envoy.compose.json
    python -m services.edge.render kubernetes --origin https://tasks.example.com \
        --out deploy/kubernetes/overlays/production/envoy.json
    RTASK_JWT_SECRET_FILE=/run/secrets/jwt_secret python -m services.edge.render jwks --out /etc/envoy/jwks.json

The local variant is rendered by the launcher (`rtask-stack up`) into its data folder, with the ports it chose.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from services.core.config import AuthConfig, ConfigError
from services.core.settings import load
from services.edge.certs import SERVER_CERT_FILE, SERVER_KEY_FILE
from services.edge.config import STRICT_DNS, AuthLimits, EdgeConfig, Endpoint, TlsListener
from services.edge.envoy_config import render_text
from services.edge.jwks import write_jwks

COMPOSE_FILE = Path(__file__).resolve().parents[2] / "envoy" / "envoy.compose.json"
KUBERNETES_FILE = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "base" / "envoy" / "envoy.json"
# The headless Service whose DNS name returns every ready gateway pod (deploy/kubernetes/base/gateway.yaml).
KUBERNETES_GATEWAY_HOST = "gateway"
COMPOSE_JWKS_PATH = "/etc/envoy/jwks.json"
COMPOSE_DASHBOARD_DIR = "/srv/dashboard"
# Where rtask-edge-init puts the server certificate and key Envoy presents (the operator's, or generated).
COMPOSE_TLS_DIR = "/etc/envoy/tls"
COMPOSE_PORT = 8080
COMPOSE_TLS_PORT = 8443
# Prometheus scrapes Envoy's stats here (deploy/observability/prometheus.yml); never published on the host.
COMPOSE_STATS_PORT = 9902
COMPOSE_ORIGINS = (
    "http://localhost:8080",
    "http://127.0.0.1:8080",
    "https://localhost:8443",
    "https://127.0.0.1:8443",
)


def compose_config(origins: Sequence[str] = COMPOSE_ORIGINS, auth_limits: AuthLimits | None = None) -> EdgeConfig:
    """Service names resolved by Docker's DNS: every replica of `--scale gateway=N` is found without an edit.

    Inside its container Envoy must listen on every interface, or nothing reaches it: the compose file
    decides what the host publishes (the TLS port; the plaintext one on the host's loopback only).
    """
    return EdgeConfig(
        listen_port=COMPOSE_PORT,
        admin_port=9901,
        gateways=[Endpoint("gateway", 50051)],
        jwks_path=COMPOSE_JWKS_PATH,
        discovery=STRICT_DNS,
        listen_address="0.0.0.0",
        tls=TlsListener(
            port=COMPOSE_TLS_PORT,
            cert_chain_path=f"{COMPOSE_TLS_DIR}/{SERVER_CERT_FILE}",
            private_key_path=f"{COMPOSE_TLS_DIR}/{SERVER_KEY_FILE}",
            address="0.0.0.0",
        ),
        admin_address="127.0.0.1",
        stats_port=COMPOSE_STATS_PORT,
        allowed_origins=tuple(origins),
        dashboard_dir=COMPOSE_DASHBOARD_DIR,
        auth_limits=auth_limits or AuthLimits(),
    )


def kubernetes_config(
    origins: Sequence[str] = COMPOSE_ORIGINS,
    auth_limits: AuthLimits | None = None,
    gateway_host: str = KUBERNETES_GATEWAY_HOST,
) -> EdgeConfig:
    """Kubernetes: the compose layout (rtask-edge-init writes the JWKS, certificate and dashboard into the pod's
    volumes at the same paths), with the gateways behind a headless Service, whose DNS name resolves to every
    ready gateway pod; STRICT_DNS re-resolves it, so scaling or rolling the gateways needs no edit. The default
    origins are those of `kubectl port-forward service/envoy 8080 8443`."""
    return replace(compose_config(origins, auth_limits), gateways=[Endpoint(gateway_host, 50051)])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m services.edge.render",
        description="Render the compose edge config, or the JWKS from the secret.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    compose = sub.add_parser("compose", help="the container deployment's config (DNS names, STRICT_DNS)")
    compose.add_argument("--out", type=Path, default=COMPOSE_FILE, help="where to write it ('-' for stdout)")
    compose.add_argument(
        "--origin", action="append", help="a browser origin CORS allows (repeatable); default: localhost:8080"
    )
    kubernetes = sub.add_parser("kubernetes", help="the Kubernetes config (headless gateway Service, STRICT_DNS)")
    kubernetes.add_argument("--out", type=Path, default=KUBERNETES_FILE, help="where to write it ('-' for stdout)")
    kubernetes.add_argument(
        "--origin", action="append", help="a browser origin CORS allows (repeatable); default: localhost:8080"
    )
    kubernetes.add_argument(
        "--gateway-host",
        default=KUBERNETES_GATEWAY_HOST,
        help="the gateways' headless Service (a full name such as gateway.NAMESPACE.svc.cluster.local also works)",
    )
    jwks = sub.add_parser("jwks", help="the JWKS Envoy verifies tokens with, from RTASK_JWT_SECRET(_FILE)")
    jwks.add_argument("--out", type=Path, default=Path(COMPOSE_JWKS_PATH))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in ("compose", "kubernetes"):
        try:
            limits = load(AuthLimits, os.environ)  # RTASK_LOGIN_PER_ADDRESS_*, RTASK_SIGNUP_PER_ADDRESS_*
        except ValueError as exc:
            print(f"bad login limits: {exc}", file=sys.stderr)
            return 2
        origins = args.origin or COMPOSE_ORIGINS
        if args.command == "compose":
            text = render_text(compose_config(origins, limits))
        else:
            text = render_text(kubernetes_config(origins, limits, args.gateway_host))
        if str(args.out) == "-":
            sys.stdout.write(text)
        else:
            args.out.write_text(text)
            print(f"wrote {args.out}")
        return 0
    try:
        secret = load(AuthConfig, os.environ).jwt_secret
    except (ConfigError, OSError) as exc:
        print(f"cannot read the JWT secret: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {write_jwks(args.out, secret)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
