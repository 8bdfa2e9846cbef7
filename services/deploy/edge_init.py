"""`rtask-edge-init`: write what the compose Envoy reads but the repository must not hold, then exit.

Envoy verifies tokens with a JWKS made from the services' secret, so the file is written at start-up from the
same secret the services read (RTASK_JWT_SECRET_FILE), into a volume Envoy mounts. The dashboard's files are
built into our image; they are copied into a second volume so Envoy serves the version of this image, not the
one a volume happened to be created with.

TLS: if the operator supplied a certificate (`server.pem` and `server.key` in --tls-from, a read-only mount),
it is installed for Envoy; otherwise a development CA (kept in --ca-dir, a volume only this container mounts)
issues one for localhost, 127.0.0.1 and `envoy`, and its certificate is copied beside it as `ca.pem` for
clients to fetch (`docker compose cp envoy:/etc/envoy/tls/ca.pem .`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from services.core.config import AuthConfig, ConfigError
from services.core.settings import load, refused_at_start, setting
from services.edge.certs import CA_CERT_FILE, DEFAULT_NAMES, SERVER_CERT_FILE, SERVER_KEY_FILE, ensure_dev_tls
from services.edge.jwks import write_jwks
from services.edge.render import COMPOSE_DASHBOARD_DIR, COMPOSE_JWKS_PATH, COMPOSE_TLS_DIR

COMPOSE_CA_DIR = "/var/lib/rtask-ca"
COMPOSE_TLS_FROM = "/run/rtask/tls"


@dataclass(frozen=True)
class EdgeInitConfig:
    """What rtask-edge-init reads from its environment besides the JWT secret."""

    tls_names: tuple[str, ...] = setting(
        "RTASK_EDGE_TLS_NAMES",
        (),
        "extra DNS names or IPs in the development server certificate (`--tls-name`)",
        shown_default="none (always `localhost`, `127.0.0.1`, `envoy`)",
    )


def sync_dashboard(source: Path, target: Path) -> int:
    """Make target hold exactly source's files (none when the image was built without a dashboard).

    The target folder itself stays (it is a volume's mount point); what is inside it is replaced.
    Returns the number of files copied.
    """
    target.mkdir(parents=True, exist_ok=True)
    for entry in target.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    if not source.is_dir():
        return 0
    shutil.copytree(source, target, dirs_exist_ok=True)
    return sum(1 for path in target.rglob("*") if path.is_file())


def _copy(source: Path, target: Path, mode: int) -> None:
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(source.read_bytes())
    os.replace(partial, target)


def install_tls(supplied: Path, ca_dir: Path, target: Path, names: Sequence[str] = DEFAULT_NAMES) -> str:
    """Put the server certificate and key Envoy presents into target; say where they came from.

    The operator's pair wins when both files are there; otherwise the development CA (created once in
    ca_dir, whose key never leaves that folder) issues one, and its certificate is published as ca.pem.
    """
    target.mkdir(parents=True, exist_ok=True)
    cert, key = supplied / SERVER_CERT_FILE, supplied / SERVER_KEY_FILE
    if cert.is_file() and key.is_file():
        _copy(cert, target / SERVER_CERT_FILE, 0o644)
        _copy(key, target / SERVER_KEY_FILE, 0o600)
        (target / CA_CERT_FILE).unlink(missing_ok=True)
        return f"the certificate supplied in {supplied}"
    files = ensure_dev_tls(ca_dir, names)
    _copy(files.server_cert, target / SERVER_CERT_FILE, 0o644)
    _copy(files.server_key, target / SERVER_KEY_FILE, 0o600)
    _copy(files.ca_cert, target / CA_CERT_FILE, 0o644)
    return f"a development certificate for {', '.join(names)}; clients trust {target / CA_CERT_FILE}"


def _parser(settings: EdgeInitConfig) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rtask-edge-init", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jwks", type=Path, default=Path(COMPOSE_JWKS_PATH), help="where Envoy reads the JWKS")
    parser.add_argument("--dashboard-from", type=Path, help="the dashboard build inside the image; omit to skip")
    parser.add_argument(
        "--dashboard-dir", type=Path, default=Path(COMPOSE_DASHBOARD_DIR), help="the folder Envoy serves at /"
    )
    parser.add_argument("--tls-dir", type=Path, default=Path(COMPOSE_TLS_DIR), help="where Envoy reads its certificate")
    parser.add_argument(
        "--tls-from", type=Path, default=Path(COMPOSE_TLS_FROM), help="an operator's server.pem and server.key, if any"
    )
    parser.add_argument("--ca-dir", type=Path, default=Path(COMPOSE_CA_DIR), help="the development CA (with its key)")
    parser.add_argument(
        "--tls-name",
        action="append",
        default=list(settings.tls_names),
        help="an extra name for the generated certificate (repeatable) [env RTASK_EDGE_TLS_NAMES, comma-separated]",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    with refused_at_start("rtask-edge-init"):
        settings = load(EdgeInitConfig, os.environ)
    args = _parser(settings).parse_args(argv)
    try:
        secret = load(AuthConfig, os.environ).jwt_secret
    except (ConfigError, OSError) as exc:
        print(f"cannot read the JWT secret: {exc} (compose fills it from RTASK_JWT_SECRET in .env)", file=sys.stderr)
        return 2
    print(f"wrote {write_jwks(args.jwks, secret)}")
    names = tuple(dict.fromkeys([*DEFAULT_NAMES, *args.tls_name]))
    print(f"TLS: {install_tls(args.tls_from, args.ca_dir, args.tls_dir, names)}")
    if args.dashboard_from is not None:
        copied = sync_dashboard(args.dashboard_from, args.dashboard_dir)
        where = f"from {args.dashboard_from}" if copied else f"(no build at {args.dashboard_from})"
        print(f"dashboard: {copied} files in {args.dashboard_dir} {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
