"""The login and signup limits the test stacks run with, set explicitly because the defaults would refuse them.

Every test reaches the edge from 127.0.0.1, so the whole session is one client address to Envoy: its
hundreds of signups and logins would exhaust the production per-address buckets (5 signups, 20 logins at
once). The gateways' per-email budget and hashing queue are opened as wide, since tests sign up and log in
concurrently. Tests of the limits themselves start an edge or gateway of their own with small ones.
"""

from __future__ import annotations

from services.edge.config import AuthLimits, RateLimit

_OPEN = RateLimit(max_tokens=1_000_000, tokens_per_fill=1_000_000, fill_interval_s=1.0)
OPEN_AUTH_LIMITS = AuthLimits(login_per_address=_OPEN, signup_per_address=_OPEN)
OPEN_LOGIN_ENV = {
    "RTASK_LOGIN_EMAIL_FAILURES_BURST": "1000000",
    "RTASK_HASH_QUEUE_MAX": "100000",
}
