"""How the clients reach the service: address, TLS, channel options and the bearer token per call."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from resilienttask.errors import Unauthenticated

DEFAULT_ADDRESS = "localhost:8080"
NOT_LOGGED_IN = "not logged in: call login() or signup() first, or pass token="

ChannelOptions = Sequence[tuple[str, Any]]


@dataclass(frozen=True)
class ChannelSettings:
    """Where the edge is and how to talk to it; `tls` is False, True (system roots) or explicit credentials."""

    address: str = DEFAULT_ADDRESS
    tls: bool | grpc.ChannelCredentials = False
    options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if not self.address or self.address != self.address.strip():
            raise ValueError(f"invalid server address {self.address!r}; expected host:port")

    def credentials(self) -> grpc.ChannelCredentials | None:
        if self.tls is False:
            return None
        if self.tls is True:
            return grpc.ssl_channel_credentials()
        return self.tls

    def sync_channel(self) -> grpc.Channel:
        creds = self.credentials()
        if creds is None:
            return grpc.insecure_channel(self.address, options=list(self.options))
        return grpc.secure_channel(self.address, creds, options=list(self.options))

    def async_channel(self) -> grpc.aio.Channel:
        creds = self.credentials()
        if creds is None:
            return grpc.aio.insecure_channel(self.address, options=list(self.options))
        return grpc.aio.secure_channel(self.address, creds, options=list(self.options))


def bearer(token: str | None) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying the token; refuses locally when there is none, with a message saying what to do."""
    if not token:
        raise Unauthenticated(NOT_LOGGED_IN)
    return (("authorization", f"Bearer {token}"),)
