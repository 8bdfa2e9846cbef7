"""`rtask-redis-init`: write the ACL file the compose Valkey loads, from the Redis passwords, then exit; or, with
`--load-functions`, load the dispatch function library into the running Valkey as the operator, then exit.

The passwords reach this container as compose secrets (one file per role, from .env); the file written holds
only their SHA-256 hashes (services.core.redis_acl), in a volume Valkey mounts read-only. It is rewritten at
every `docker compose up`, so a changed password or a new version's rules apply on the next start. Valkey's
own container needs no password but the operator's, for its health probe.

The library (services.core.dispatch_functions) is loaded once Valkey runs, by a second one-shot run with only the
operator's password (compose's `redis-functions`, the Kubernetes Job of that name): `FUNCTION LOAD REPLACE`, on a
cluster URL on every primary. Valkey keeps it in its AOF; loading it again is harmless, so it runs at every
`docker compose up` too.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import redis
from redis.cluster import RedisCluster
from redis.exceptions import RedisError

from services.core import dispatch_functions, redis_acl
from services.core.config import CLUSTER_SCHEMES

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
    parser.add_argument(
        "--load-functions",
        action="store_true",
        help="instead: load the dispatch function library into the running Valkey as the operator (at --redis-url, "
        "with the admin password from --secrets-dir), on every primary of a cluster",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL", ""),
        help="with --load-functions: the operator's URL, e.g. redis://rtask-admin@redis:6379/0 or "
        "redis+cluster://rtask-admin@node:7000/0 (default: $REDIS_URL)",
    )
    return parser


def load_functions(url: str, password: str) -> None:
    """Load the library on the server (or every primary of the cluster) at url, as the user it names."""
    scheme, sep, rest = url.partition("://")
    if scheme in CLUSTER_SCHEMES:
        with RedisCluster.from_url(f"{CLUSTER_SCHEMES[scheme]}{sep}{rest}", password=password) as cluster:
            dispatch_functions.load_library(cluster)
        return
    with redis.Redis.from_url(url, password=password) as client:
        dispatch_functions.load_library(client)


def _load_functions(args: argparse.Namespace) -> int:
    if not args.redis_url:
        print("--redis-url (or REDIS_URL) is required with --load-functions", file=sys.stderr)
        return 2
    path = args.secrets_dir / secret_name(redis_acl.ADMIN)
    try:
        password = path.read_text().strip()
    except OSError as exc:
        print(f"cannot read the admin Redis password: {exc}", file=sys.stderr)
        return 2
    try:
        load_functions(args.redis_url, password)
    except (RedisError, OSError) as exc:
        print(f"could not load the dispatch functions: {exc}", file=sys.stderr)
        return 1
    print(f"loaded the function library {dispatch_functions.LIBRARY}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.load_functions:
        return _load_functions(args)
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
