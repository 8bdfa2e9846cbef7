"""Access tokens: what is minted, and every kind of bad token verify_token refuses."""

from __future__ import annotations

import base64
import json
import time
import uuid
import warnings
from typing import Any

import jwt
import pytest

from services.core import tokens as tokens_module
from services.core.config import AuthConfig, ConfigError
from services.core.errors import Unauthenticated
from services.core.settings import load
from services.core.tokens import (
    MAX_TOKEN_CHARS,
    WORKER_AUDIENCE,
    VerifiedTokens,
    mint_user_token,
    mint_worker_token,
    verify_token,
)

SECRET = b"s" * 40
CONFIG = AuthConfig(jwt_secret=SECRET, issuer="rtask-test", audience="rtask-test-api", token_ttl_s=600)


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": str(uuid.uuid4()),
        "iat": now,
        "exp": now + 600,
        "iss": CONFIG.issuer,
        "aud": CONFIG.audience,
        "jti": uuid.uuid4().hex,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(header: dict[str, Any], claims: dict[str, Any], signature: str = "") -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}.{signature}"


def _refused(token: str, audience: str = CONFIG.audience) -> None:
    with pytest.raises(Unauthenticated) as caught:
        verify_token(CONFIG, token, audience)
    assert str(caught.value) == "invalid or expired token"


def test_user_token_carries_every_claim_and_verifies() -> None:
    user_id = str(uuid.uuid4())
    issued = mint_user_token(CONFIG, user_id)
    header = jwt.get_unverified_header(issued.token)
    claims = jwt.decode(issued.token, SECRET, algorithms=["HS256"], audience=CONFIG.audience)
    assert header["alg"] == "HS256"
    assert claims["sub"] == user_id
    assert claims["iss"] == CONFIG.issuer
    assert claims["aud"] == CONFIG.audience
    assert claims["exp"] - claims["iat"] == CONFIG.token_ttl_s
    assert issued.expires_at == claims["exp"]
    assert claims["jti"]
    assert verify_token(CONFIG, issued.token, CONFIG.audience) == user_id


def test_every_token_gets_its_own_id() -> None:
    first, second = (mint_user_token(CONFIG, "u") for _ in range(2))
    assert (
        jwt.decode(first.token, options={"verify_signature": False})["jti"]
        != jwt.decode(second.token, options={"verify_signature": False})["jti"]
    )


def test_user_and_worker_tokens_do_not_open_each_others_api() -> None:
    user = mint_user_token(CONFIG, "user-1").token
    worker = mint_worker_token(CONFIG, "worker-1").token
    assert verify_token(CONFIG, worker, WORKER_AUDIENCE) == "worker-1"
    _refused(user, WORKER_AUDIENCE)
    _refused(worker, CONFIG.audience)


def test_token_listing_both_audiences_is_refused() -> None:
    token = jwt.encode(_claims(aud=[CONFIG.audience, WORKER_AUDIENCE]), SECRET, algorithm="HS256")
    _refused(token)
    _refused(token, WORKER_AUDIENCE)


@pytest.mark.parametrize("algorithm", ["HS384", "HS512"])
def test_other_hmac_algorithms_are_refused_even_with_the_right_key(algorithm: str) -> None:
    with warnings.catch_warnings():  # PyJWT warns that the key is short for these algorithms: not the point here
        warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
        token = jwt.encode(_claims(), SECRET, algorithm=algorithm)
    _refused(token)


def test_alg_none_is_refused() -> None:
    _refused(jwt.encode(_claims(), None, algorithm="none"))
    _refused(_unsigned({"alg": "none", "typ": "JWT"}, _claims()))
    _refused(_unsigned({"alg": "None", "typ": "JWT"}, _claims()))


def test_asymmetric_algorithm_header_is_refused() -> None:
    """Key confusion: an RS256 header "signed" with the HMAC secret as if it were a public key."""
    header = {"alg": "RS256", "typ": "JWT"}
    signing_input = _unsigned(header, _claims()).rstrip(".")
    forged = jwt.api_jws.get_algorithm_by_name("HS256").sign(signing_input.encode(), SECRET)
    _refused(f"{signing_input}.{_b64(forged)}")


def test_wrong_key_is_refused() -> None:
    _refused(jwt.encode(_claims(), b"w" * 40, algorithm="HS256"))


def test_tampered_payload_is_refused() -> None:
    """Only the signature can refuse this token: both subjects are well-formed user ids, and the same claims
    signed with the key are accepted."""
    victim, attacker = str(uuid.uuid4()), str(uuid.uuid4())
    header, _, signature = mint_user_token(CONFIG, victim).token.split(".")
    claims = _claims(sub=attacker)
    assert verify_token(CONFIG, jwt.encode(claims, SECRET, algorithm="HS256"), CONFIG.audience) == attacker
    _refused(f"{header}.{_b64(json.dumps(claims).encode())}.{signature}")


def test_stripped_signature_is_refused() -> None:
    header, claims, _ = mint_user_token(CONFIG, "u").token.split(".")
    _refused(f"{header}.{claims}.")


def test_expired_token_is_refused_without_leeway() -> None:
    now = int(time.time())
    _refused(jwt.encode(_claims(iat=now - 120, exp=now - 1), SECRET, algorithm="HS256"))


def test_token_issued_in_the_future_is_refused() -> None:
    now = int(time.time())
    _refused(jwt.encode(_claims(iat=now + 300, exp=now + 900), SECRET, algorithm="HS256"))


def test_token_not_yet_valid_is_refused() -> None:
    _refused(jwt.encode(_claims(nbf=int(time.time()) + 300), SECRET, algorithm="HS256"))


@pytest.mark.parametrize("claim", ["iss", "aud"])
def test_wrong_issuer_or_audience_is_refused(claim: str) -> None:
    _refused(jwt.encode(_claims(**{claim: "someone-else"}), SECRET, algorithm="HS256"))


@pytest.mark.parametrize("claim", ["sub", "iat", "exp", "iss", "aud", "jti"])
def test_every_claim_is_required(claim: str) -> None:
    claims = _claims()
    del claims[claim]
    _refused(jwt.encode(claims, SECRET, algorithm="HS256"))


@pytest.mark.parametrize("subject", ["", 42, ["a"]])
def test_subject_must_be_a_non_empty_string(subject: object) -> None:
    _refused(jwt.encode(_claims(sub=subject), SECRET, algorithm="HS256"))


@pytest.mark.parametrize(
    "token",
    ["", "garbage", "a.b", "a.b.c", "a.b.c.d", "Bearer x", "e30.e30.", "....", "\u00e9t\u00e9.x.y"],
)
def test_malformed_tokens_are_refused(token: str) -> None:
    _refused(token)


def test_oversized_token_is_refused_before_parsing() -> None:
    padded = jwt.encode(_claims(pad="x" * MAX_TOKEN_CHARS), SECRET, algorithm="HS256")
    assert len(padded) > MAX_TOKEN_CHARS
    _refused(padded)


def test_critical_header_extension_is_refused() -> None:
    _refused(jwt.encode(_claims(), SECRET, algorithm="HS256", headers={"crit": ["exp-ext"]}))


def test_issuer_and_audience_follow_configuration() -> None:
    other = AuthConfig(jwt_secret=SECRET, issuer="other-issuer", audience=CONFIG.audience)
    user = str(uuid.uuid4())
    token = mint_user_token(other, user).token
    _refused(token)
    assert verify_token(other, token, CONFIG.audience) == user


def test_user_tokens_must_name_a_user_id() -> None:
    _refused(mint_user_token(CONFIG, "not-a-user-id").token)
    assert verify_token(CONFIG, mint_worker_token(CONFIG, "worker-1").token, WORKER_AUDIENCE) == "worker-1"


@pytest.mark.parametrize("secret", [b"", b"short", b"x" * 31])
def test_secrets_under_32_bytes_are_rejected_by_configuration(secret: bytes) -> None:
    with pytest.raises(ConfigError):
        AuthConfig(jwt_secret=secret)


@pytest.mark.parametrize("ttl_s", [0, -5])
def test_token_lifetime_must_be_positive(ttl_s: int) -> None:
    with pytest.raises(ConfigError):
        AuthConfig(jwt_secret=SECRET, token_ttl_s=ttl_s)


def test_secret_file_is_read_from_configuration(tmp_path: Any) -> None:
    path = tmp_path / "secret"
    path.write_text("f" * 48 + "\n")
    config = load(AuthConfig, {"RTASK_JWT_SECRET_FILE": str(path)})
    assert config.jwt_secret == b"f" * 48
    with pytest.raises(ConfigError):
        load(AuthConfig, {})


def test_verified_tokens_are_remembered_until_they_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = VerifiedTokens(CONFIG, CONFIG.audience, capacity=2)
    user_id = str(uuid.uuid4())
    issued = mint_user_token(CONFIG, user_id)
    assert cache.subject(issued.token) == user_id
    assert cache.subject(issued.token) == user_id, "the second call is answered from the cache"
    worker = mint_worker_token(CONFIG, "worker-1").token
    with pytest.raises(Unauthenticated):
        cache.subject(worker)
    with pytest.raises(Unauthenticated):
        cache.subject(worker)  # a refused token is never remembered: refused again
    # Past its expiry the cache does not answer: the token is verified again (here by a stand-in that refuses).
    checked: list[str] = []

    def refuse(config: AuthConfig, token: str, audience: str) -> tuple[str, float]:
        checked.append(token)
        raise Unauthenticated("invalid or expired token")

    monkeypatch.setattr(tokens_module, "verify_token_claims", refuse)
    assert cache.subject(issued.token) == user_id, "still valid: answered from the cache"
    later = issued.expires_at + 1
    monkeypatch.setattr(time, "time", lambda: later)
    with pytest.raises(Unauthenticated):
        cache.subject(issued.token)
    assert checked == [issued.token]


def test_the_verified_token_cache_stays_bounded() -> None:
    cache = VerifiedTokens(CONFIG, CONFIG.audience, capacity=2)
    tokens = [mint_user_token(CONFIG, str(uuid.uuid4())).token for _ in range(5)]
    for token in tokens:
        cache.subject(token)
    assert len(cache) == 2
