"""`rtask-redis-init`: write the ACL file the compose Valkey loads, from the Redis passwords, then exit.

The passwords reach this container as compose secrets (one file per role, from .env); the file written holds
only their SHA-256 hashes (services.core.redis_acl), in a volume Valkey mounts read-only. It is rewritten at
every `docker compose up`, so a changed password or a new version's rules apply on the next start. Valkey's
own container needs no password but the operator's, for its health probe.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from services.core import redis_acl

COMPOSE_ACL_FILE = "/etc/rtask-redis/users.acl"
SECRETS_DIR = "/run/secrets"


def secret_name(role: str) -> str:
    """The compose secret (and file under /run/secrets) holding a role's password."""
    return f"redis_{role}_password"


def write_acl_file(path: Path, passwords: dict[str, str]) -> Path:
    """Replace path with the ACL file in one rename, so Valkey never reads half a file. Readable by all: it
    holds hashes only, and Valkey runs as its own user."""
    text = redis_acl.acl_file_text(passwords)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".new")
    partial.write_text(text)
    partial.chmod(0o644)
    os.replace(partial, path)
    return path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rtask-redis-init", description=__doc__.split("\n\n")[0])
    parser.add_argument("--acl-file", type=Path, default=Path(COMPOSE_ACL_FILE), help="where Valkey reads its users")
    parser.add_argument("--secrets-dir", type=Path, default=Path(SECRETS_DIR), help="one password file per role")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    passwords = {}
    for role in redis_acl.ROLES:
        path = args.secrets_dir / secret_name(role)
        try:
            passwords[role] = path.read_text().strip()
        except OSError as exc:
            print(f"cannot read the {role} Redis password: {exc}", file=sys.stderr)
            return 2
    try:
        written = write_acl_file(args.acl_file, passwords)
    except ValueError as exc:
        print(f"{exc} (compose fills them from REDIS_*_PASSWORD in .env)", file=sys.stderr)
        return 2
    print(f"wrote {written}: users {', '.join(redis_acl.USERS[role].name for role in redis_acl.ROLES)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
