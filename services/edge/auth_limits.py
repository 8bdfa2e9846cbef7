"""The AuthService route's local rate limit: a token bucket per client address and method, kept by Envoy.

Each request yields one descriptor, [method = its :path, masked_remote_address = the client's address
(IPv4 /32, IPv6 /64)]. A descriptor entry with no value is a wildcard: Envoy keeps one bucket per distinct
address it has seen (at most tracked_addresses, least recently used forgotten first). The address is the
trusted client address of the connection manager (use_remote_address with trusted_proxy_hops), so a
client's own x-forwarded-for never picks its bucket.
"""

from __future__ import annotations

from typing import Any

from resilienttask.v1 import auth_pb2
from services.edge.config import AuthLimits, RateLimit

STAT_PREFIX = "auth_rate_limit"
METHOD_KEY = "method"
ADDRESS_KEY = "masked_remote_address"
_AUTH = auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name
LOGIN_PATH = f"/{_AUTH}/Login"
SIGNUP_PATH = f"/{_AUTH}/Signup"


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _bucket(limit: RateLimit) -> dict[str, Any]:
    return {
        "max_tokens": limit.max_tokens,
        "tokens_per_fill": limit.tokens_per_fill,
        "fill_interval": _seconds(limit.fill_interval_s),
    }


def _per_address(path: str, limit: RateLimit) -> dict[str, Any]:
    return {"entries": [{"key": METHOD_KEY, "value": path}, {"key": ADDRESS_KEY}], "token_bucket": _bucket(limit)}


def auth_rate_limit(limits: AuthLimits) -> dict[str, Any]:
    """The per-route config of envoy.filters.http.local_ratelimit for AuthService."""
    return {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        "stat_prefix": STAT_PREFIX,
        # Only for a request that matches no descriptor (a method AuthService does not have): one shared bucket.
        "token_bucket": _bucket(limits.login_per_address),
        "always_consume_default_token_bucket": False,
        "rate_limits": [
            {
                "actions": [
                    {"request_headers": {"header_name": ":path", "descriptor_key": METHOD_KEY}},
                    {"masked_remote_address": {"v4_prefix_mask_len": 32, "v6_prefix_mask_len": 64}},
                ]
            }
        ],
        "descriptors": [
            _per_address(LOGIN_PATH, limits.login_per_address),
            _per_address(SIGNUP_PATH, limits.signup_per_address),
        ],
        "max_dynamic_descriptors": limits.tracked_addresses,
        "filter_enabled": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
        "filter_enforced": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
        # Without this a refusal is HTTP 429, which gRPC clients read as UNAVAILABLE (and would retry).
        "rate_limited_as_resource_exhausted": True,
    }
