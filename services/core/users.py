"""Users: email rules and the SQL that stores and finds them."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from services.core.errors import AlreadyExists, InvalidArgument

MAX_EMAIL_CHARS = 254
MAX_LOCAL_PART_CHARS = 64
# A pragmatic subset of RFC 5321: dot-atom local part, ASCII host names with a dotted, non-numeric top label.
_LOCAL_PART = re.compile(r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_DOMAIN = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?")


@dataclass(frozen=True)
class UserRecord:
    id: uuid.UUID
    email: str
    password_hash: str = field(repr=False)  # kept out of reprs, so it never reaches a log line
    created_at: datetime


def normalize_email(raw: str) -> str:
    """The trimmed, lower-cased address, or InvalidArgument naming the email field."""
    email = raw.strip().lower()
    if not email:
        raise InvalidArgument("email", "is required")
    if len(email) > MAX_EMAIL_CHARS:
        raise InvalidArgument("email", f"must be at most {MAX_EMAIL_CHARS} characters")
    local, at, domain = email.rpartition("@")
    if not at or len(local) > MAX_LOCAL_PART_CHARS or not _LOCAL_PART.fullmatch(local) or not _DOMAIN.fullmatch(domain):
        raise InvalidArgument("email", "is not a valid email address")
    return email


def _record(row: asyncpg.Record) -> UserRecord:
    return UserRecord(
        id=row["id"], email=row["email"], password_hash=row["password_hash"], created_at=row["created_at"]
    )


async def insert_user(pool: asyncpg.Pool, email: str, password_hash: str) -> UserRecord:
    """Store a new user; AlreadyExists when the (normalized) email is taken."""
    try:
        row = await pool.fetchrow(
            "INSERT INTO users (id, email, password_hash) VALUES ($1, $2, $3)"
            " RETURNING id, email, password_hash, created_at",
            uuid.uuid4(),
            email,
            password_hash,
        )
    except asyncpg.UniqueViolationError as exc:
        raise AlreadyExists("email", "is already registered") from exc
    assert row is not None
    return _record(row)


async def find_user_by_email(pool: asyncpg.Pool, email: str) -> UserRecord | None:
    row = await pool.fetchrow("SELECT id, email, password_hash, created_at FROM users WHERE email = $1", email)
    return None if row is None else _record(row)
