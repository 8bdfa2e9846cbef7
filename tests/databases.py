"""Databases of their own for tests that run a private stack or migrate from scratch, on the session's server."""

from __future__ import annotations

import uuid

import asyncpg


async def create_database(server_url: str, prefix: str) -> str:
    """A new, empty database named `prefix_<random>` on the server of `server_url`; its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return server_url.rsplit("/", 1)[0] + f"/{name}"
