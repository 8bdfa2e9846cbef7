"""AuthService: sign up and log in, each answered with a user and a fresh access token."""

from __future__ import annotations

import logging

import asyncpg
import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from resilienttask.v1 import auth_pb2, auth_pb2_grpc
from services.core.config import AuthConfig
from services.core.errors import Unauthenticated, translate_errors
from services.core.passwords import PasswordHasher, password_bytes
from services.core.tokens import IssuedToken, mint_user_token
from services.core.users import UserRecord, find_user_by_email, insert_user, normalize_email
from services.gateway.login_limits import EmailLimiter, LoginLimitsConfig

log = logging.getLogger(__name__)

# One message for every failed login, so a caller cannot learn which emails are registered.
LOGIN_FAILED = "invalid email or password"


def _user_message(user: UserRecord) -> auth_pb2.User:
    created_at = Timestamp()
    created_at.FromDatetime(user.created_at)
    return auth_pb2.User(id=str(user.id), email=user.email, created_at=created_at)


def _expiry(issued: IssuedToken) -> Timestamp:
    return Timestamp(seconds=int(issued.expires_at))


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    """Needs no token; passwords are bcrypt-hashed off the event loop and never logged or returned.

    Envoy limits both calls per client address. Here a bounded hash queue refuses what the threads cannot
    serve soon (RESOURCE_EXHAUSTED, at once), and failed logins are limited per email. A signup of a
    registered email answers ALREADY_EXISTS, as the contract says (there is no email verification to hide
    it behind): probing which emails exist is slowed by the per-address signup limit at the edge, and
    each probe costs a hash like any signup, so it also waits in (or is refused by) the same queue.
    """

    def __init__(self, pool: asyncpg.Pool, config: AuthConfig, limits: LoginLimitsConfig | None = None) -> None:
        limits = limits or LoginLimitsConfig()
        self._pool = pool
        self._config = config
        self._hasher = PasswordHasher(
            config.bcrypt_cost, threads=limits.hash_threads, max_waiting=limits.hash_queue_max
        )
        self._emails = EmailLimiter(limits)

    async def close(self) -> None:
        await self._hasher.close()

    @translate_errors
    async def Signup(
        self, request: auth_pb2.SignupRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.SignupResponse:
        email = normalize_email(request.email)
        password = password_bytes(request.password)
        user = await insert_user(self._pool, email, await self._hasher.hash(password))
        log.info("user signed up", extra={"user_id": str(user.id)})
        issued = mint_user_token(self._config, str(user.id))
        return auth_pb2.SignupResponse(user=_user_message(user), access_token=issued.token, expires_at=_expiry(issued))

    @translate_errors
    async def Login(self, request: auth_pb2.LoginRequest, context: grpc.aio.ServicerContext) -> auth_pb2.LoginResponse:
        email = normalize_email(request.email)
        password = password_bytes(request.password)
        self._emails.take(email)
        try:
            user = await find_user_by_email(self._pool, email)
            # verify() costs one bcrypt check whether or not the user exists (a dummy hash stands in).
            matches = await self._hasher.verify(password, None if user is None else user.password_hash)
        except BaseException:
            self._emails.give_back(email)  # refused or interrupted: the caller learned nothing, nothing counts
            raise
        if user is None or not matches:
            raise Unauthenticated(LOGIN_FAILED)
        self._emails.give_back(email)
        issued = mint_user_token(self._config, str(user.id))
        return auth_pb2.LoginResponse(user=_user_message(user), access_token=issued.token, expires_at=_expiry(issued))
