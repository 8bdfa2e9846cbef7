"""`rtask-edge-init`: write what the compose Envoy reads but the repository must not hold, then exit.

Envoy verifies tokens with a JWKS made from the services' secret, so the file is written at start-up from the
same secret the services read (RTASK_JWT_SECRET_FILE), into a volume Envoy mounts. The dashboard's files are
built into our image; they are copied into a second volume so Envoy serves the version of this image, not the
one a volume happened to be created with.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from services.core.config import AuthConfig, ConfigError
from services.edge.jwks import write_jwks
from services.edge.render import COMPOSE_DASHBOARD_DIR, COMPOSE_JWKS_PATH


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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rtask-edge-init", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jwks", type=Path, default=Path(COMPOSE_JWKS_PATH), help="where Envoy reads the JWKS")
    parser.add_argument("--dashboard-from", type=Path, help="the dashboard build inside the image; omit to skip")
    parser.add_argument(
        "--dashboard-dir", type=Path, default=Path(COMPOSE_DASHBOARD_DIR), help="the folder Envoy serves at /"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        secret = AuthConfig.from_env(os.environ).jwt_secret
    except (ConfigError, OSError) as exc:
        print(f"cannot read the JWT secret: {exc} (compose fills it from RTASK_JWT_SECRET in .env)", file=sys.stderr)
        return 2
    print(f"wrote {write_jwks(args.jwks, secret)}")
    if args.dashboard_from is not None:
        copied = sync_dashboard(args.dashboard_from, args.dashboard_dir)
        where = f"from {args.dashboard_from}" if copied else f"(no build at {args.dashboard_from})"
        print(f"dashboard: {copied} files in {args.dashboard_dir} {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
