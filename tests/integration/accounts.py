"""Signing test users up through AuthService, and calling SchedulerService with their tokens."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from resilienttask.v1 import auth_pb2, auth_pb2_grpc
from tests.conftest import unique_email

PASSWORD = "correct horse battery"


@dataclass(frozen=True)
class Account:
    user_id: str
    email: str
    password: str
    token: str

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata carrying this user's bearer token."""
        return (("authorization", f"Bearer {self.token}"),)


async def signup(channel: grpc.aio.Channel, prefix: str = "user", password: str = PASSWORD) -> Account:
    reply = await auth_pb2_grpc.AuthServiceStub(channel).Signup(
        auth_pb2.SignupRequest(email=unique_email(prefix), password=password)
    )
    return Account(reply.user.id, reply.user.email, password, reply.access_token)
