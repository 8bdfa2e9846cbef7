"""Resume tokens: opaque to clients, they name a position in the caller's own event history."""

from __future__ import annotations

import base64
import binascii

from services.core.errors import InvalidArgument
from services.core.events import parse_stream_id

FIELD = "resume_token"
_VERSION = "v1:"
# A token is ~40 characters; anything much longer is refused before decoding.
MAX_TOKEN_CHARS = 128
_MALFORMED = "malformed; send the resume_token of a message this stream sent, or none for a fresh snapshot"


def encode(entry_id: str) -> str:
    return base64.urlsafe_b64encode(f"{_VERSION}{entry_id}".encode()).decode().rstrip("=")


def decode(token: str) -> str:
    """The history position a token names; InvalidArgument(resume_token) when it is not one of ours."""
    if len(token) > MAX_TOKEN_CHARS:
        raise InvalidArgument(FIELD, f"at most {MAX_TOKEN_CHARS} characters")
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
        text = raw.decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidArgument(FIELD, _MALFORMED) from exc
    if not text.startswith(_VERSION):
        raise InvalidArgument(FIELD, _MALFORMED)
    entry_id = text.removeprefix(_VERSION)
    try:
        position = parse_stream_id(entry_id)
    except ValueError as exc:
        raise InvalidArgument(FIELD, _MALFORMED) from exc
    if max(position) >= 1 << 64:
        raise InvalidArgument(FIELD, _MALFORMED)
    return entry_id
