"""Grant or revoke the operator role (OperatorService) on the server, where the database is:

    DATABASE_URL=postgresql://... python -m services.gateway.operators grant EMAIL
    DATABASE_URL=postgresql://... python -m services.gateway.operators revoke EMAIL
    DATABASE_URL=postgresql://... python -m services.gateway.operators list

The role is a flag on the user's row, read by the gateways on every OperatorService call; there is no RPC to
grant it, so only someone with the database's credentials can make an operator.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from services.core.config import DatabaseConfig
from services.core.db import create_pool
from services.core.errors import InvalidArgument
from services.core.kind_controls import set_operator
from services.core.settings import load, refused_at_start
from services.core.users import normalize_email


async def change(database: DatabaseConfig, email: str, operator: bool) -> bool:
    """Grant (or revoke) the role of the user with this email; False when no user has it."""
    pool = await create_pool(database)
    try:
        return await set_operator(pool, normalize_email(email), operator)
    finally:
        await pool.close()


async def operators(database: DatabaseConfig) -> list[str]:
    pool = await create_pool(database)
    try:
        return [r["email"] for r in await pool.fetch("SELECT email FROM users WHERE operator ORDER BY email")]
    finally:
        await pool.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.gateway.operators", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=("grant", "revoke", "list"))
    parser.add_argument("email", nargs="?", default="")
    args = parser.parse_args(argv)
    with refused_at_start(parser.prog):
        database = load(DatabaseConfig, os.environ)
    if args.action == "list":
        print("\n".join(asyncio.run(operators(database))))
        return 0
    if not args.email:
        parser.error("EMAIL is required")
    try:
        found = asyncio.run(change(database, args.email, args.action == "grant"))
    except InvalidArgument as exc:
        print(exc, file=sys.stderr)
        return 2
    if not found:
        print(f"no user with the email {args.email!r}", file=sys.stderr)
        return 1
    print(f"{'granted' if args.action == 'grant' else 'revoked'} the operator role: {args.email}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
