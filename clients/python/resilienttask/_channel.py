"""How the clients reach the service: address, TLS, channel options and the bearer token per call."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2_grpc

from resilienttask.errors import Unauthenticated
from resilienttask.v1 import auth_pb2_grpc, operator_pb2_grpc, schedule_pb2_grpc, scheduler_pb2_grpc

DEFAULT_ADDRESS = "localhost:8080"
NOT_LOGGED_IN = "not logged in: call login() or signup() first, or pass token="

ChannelOptions = Sequence[tuple[str, Any]]


@dataclass(frozen=True)
class ChannelSettings:
    """Where the edge is and how to talk to it.

    `tls` is False, True (system roots) or explicit credentials; `ca_file` (a PEM file, e.g. the local
    stack's development CA) means TLS trusting exactly those roots. Its contents are read at once, so a
    wrong path fails here rather than at the first call.
    """

    address: str = DEFAULT_ADDRESS
    tls: bool | grpc.ChannelCredentials = False
    options: tuple[tuple[str, Any], ...] = ()
    ca_file: str | os.PathLike[str] | None = None
    _roots: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.address or self.address != self.address.strip():
            raise ValueError(f"invalid server address {self.address!r}; expected host:port")
        if self.ca_file is not None:
            if not isinstance(self.tls, bool):
                raise ValueError("pass either tls credentials or ca_file, not both")
            object.__setattr__(self, "_roots", Path(self.ca_file).read_bytes())

    def credentials(self) -> grpc.ChannelCredentials | None:
        if self._roots is not None:
            return grpc.ssl_channel_credentials(root_certificates=self._roots)
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


@dataclass(frozen=True)
class Stubs:
    """The stubs of every service the clients call, over one channel (blocking or asyncio: the stubs take either)."""

    channel: Any
    auth: Any
    scheduler: Any
    schedules: Any
    operator: Any
    health: Any

    @classmethod
    def over(cls, channel: grpc.Channel | grpc.aio.Channel) -> Stubs:
        return cls(
            channel=channel,
            auth=auth_pb2_grpc.AuthServiceStub(channel),
            scheduler=scheduler_pb2_grpc.SchedulerServiceStub(channel),
            schedules=schedule_pb2_grpc.ScheduleServiceStub(channel),
            operator=operator_pb2_grpc.OperatorServiceStub(channel),
            health=health_pb2_grpc.HealthStub(channel),
        )
