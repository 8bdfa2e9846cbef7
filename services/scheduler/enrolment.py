"""Worker enrolment: who gets a worker token, naming which worker id.

A worker proves it belongs to the deployment with the enrolment secret, and names the id it will use (its
Redis consumer name, unique per process). The scheduler signs a token for that id only if no worker was
ever given one for it (worker_identities, PostgreSQL): a worker holding the enrolment secret can enrol
as many fresh ids as it likes, but never as another worker, whose tasks it could then report on. A worker
renews its token with the token itself, before it expires or (after an outage) within the time an id
stays enrolled; a renewal keeps the id.
"""

from __future__ import annotations

import logging

import asyncpg
import grpc

from resilienttask.worker.v1 import worker_pb2
from services.core.auth_interceptor import MISSING_TOKEN, bearer_token
from services.core.errors import AlreadyExists, InvalidArgument, Unauthenticated
from services.core.tokens import (
    WORKER_AUDIENCE,
    IssuedToken,
    VerifiedTokens,
    mint_worker_token,
    verify_token_claims,
)
from services.core.worker_credentials import WorkerKeyConfig, worker_id_problem

log = logging.getLogger(__name__)

# Ids whose last token expired this long ago are forgotten (and may be enrolled again): by then nothing
# they held is still theirs (a silent holder's tasks are reclaimed within seconds).
FORGET_AFTER_DAYS = 30

_ENROL = """
WITH pruned AS (
    DELETE FROM worker_identities WHERE renewed_at < now() - make_interval(days => $2)
)
INSERT INTO worker_identities (id) VALUES ($1) ON CONFLICT (id) DO NOTHING RETURNING id
"""
_RENEW = "UPDATE worker_identities SET renewed_at = now() WHERE id = $1 RETURNING id"


class Enrolment:
    """Issues worker tokens: to a new id with the enrolment secret, to a known id with its own live token."""

    def __init__(self, pool: asyncpg.Pool, keys: WorkerKeyConfig, verified: VerifiedTokens) -> None:
        self.pool = pool
        self.keys = keys
        self.verified = verified

    async def enrol(self, request: worker_pb2.EnrolRequest, context: grpc.aio.ServicerContext) -> IssuedToken:
        worker_id = request.worker_id
        problem = worker_id_problem(worker_id)
        if problem is not None:
            raise InvalidArgument("worker_id", problem.partition(": ")[2])
        presented = bearer_token(context.invocation_metadata())
        if presented is None:
            raise Unauthenticated(MISSING_TOKEN)
        if self.keys.enrolment.matches(presented):
            if await self.pool.fetchval(_ENROL, worker_id, FORGET_AFTER_DAYS) is None:
                raise AlreadyExists(
                    "worker_id", f"{worker_id!r} is enrolled already; each worker process needs its own id"
                )
            log.info("worker enrolled", extra={"worker": worker_id})
        else:
            subject = self._renewing(presented)
            if subject != worker_id:
                raise Unauthenticated("a worker token renews only its own worker id")
            if await self.pool.fetchval(_RENEW, worker_id) is None:
                raise Unauthenticated("the worker id is no longer enrolled")
        return mint_worker_token(self.keys, worker_id, self.keys.token_ttl_s)

    def _renewing(self, presented: str) -> str:
        """The worker id a renewal speaks for: a live worker token, or one that expired within the time an id
        stays enrolled (an outage of the schedulers or the database outlasted the token; the worker would
        otherwise be locked out of its own id for good). Anything else is Unauthenticated."""
        try:
            return self.verified.subject(presented)
        except Unauthenticated:
            return verify_token_claims(
                self.keys, presented, WORKER_AUDIENCE, expired_for_at_most_s=FORGET_AFTER_DAYS * 86_400
            )[0]


def worker_verifier(keys: WorkerKeyConfig) -> VerifiedTokens:
    """Worker tokens checked against the worker key (never the user key), cached until they expire."""
    return VerifiedTokens(keys, WORKER_AUDIENCE)
