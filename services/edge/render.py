"""`python -m services.edge.render`: write the compose variant of the edge config, or a JWKS from the secret.

The JWKS holds the secret, so it is written where Envoy runs, at start-up, never committed: the config
only names its path.

    python -m services.edge.render compose --out envoy/envoy.compose.json
    RTASK_JWT_SECRET_FILE=/run/secrets/jwt_secret python -m services.edge.render jwks --out /etc/envoy/jwks.json

The local variant is rendered by the launcher (`rtask-stack up`) into its data folder, with the ports it chose.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from services.core.config import AuthConfig, ConfigError
from services.edge.certs import SERVER_CERT_FILE, SERVER_KEY_FILE
from services.edge.config import STRICT_DNS, AuthLimits, EdgeConfig, Endpoint, TlsListener
from services.edge.envoy_config import render_text
from services.edge.jwks import write_jwks

COMPOSE_FILE = Path(__file__).resolve().parents[2] / "envoy" / "envoy.compose.json"
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
    jwks = sub.add_parser("jwks", help="the JWKS Envoy verifies tokens with, from RTASK_JWT_SECRET(_FILE)")
    jwks.add_argument("--out", type=Path, default=Path(COMPOSE_JWKS_PATH))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "compose":
        try:
            limits = AuthLimits.from_env(os.environ)  # RTASK_LOGIN_PER_ADDRESS_*, RTASK_SIGNUP_PER_ADDRESS_*
        except ValueError as exc:
            print(f"bad login limits: {exc}", file=sys.stderr)
            return 2
        text = render_text(compose_config(args.origin or COMPOSE_ORIGINS, limits))
        if str(args.out) == "-":
            sys.stdout.write(text)
        else:
            args.out.write_text(text)
            print(f"wrote {args.out}")
        return 0
    try:
        secret = AuthConfig.from_env(os.environ).jwt_secret
    except (ConfigError, OSError) as exc:
        print(f"cannot read the JWT secret: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {write_jwks(args.out, secret)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
