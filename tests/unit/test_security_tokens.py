"""JWT access tokens (issue, verify, persisted keys, every attack refused), scopes, rate limits."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
import threading
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from phi_engine.errors import (
    ForbiddenError,
    InvalidRequestError,
    UnauthorizedError,
    UnsupportedError,
)
from phi_engine.security import (
    SCOPES,
    Client,
    RateLimitedError,
    RateLimiter,
    TokenClaims,
    TokenIssuer,
    require_scope,
)
from phi_engine.security._tokens import KEY_FILE

NOW = 1_750_000_000.0


class Clock:
    """A settable clock."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _client(*scopes: str, disabled: bool = False) -> Client:
    return Client(
        client_id="cl_0123456789abcdef",
        scopes=scopes or ("infer",),
        created_at=NOW,
        disabled=disabled,
        name=None,
    )


@pytest.fixture
def key_dir(tmp_path: Path) -> Path:
    return tmp_path / "home" / "keys"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def issuer(key_dir: Path, clock: Clock) -> TokenIssuer:
    return TokenIssuer(key_dir, clock=clock)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _parts(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    header, payload, signature = token.split(".")
    return json.loads(_unb64(header)), json.loads(_unb64(payload)), signature


def _compact(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    """``header.payload.signature``, the last part empty when there is no signature."""
    head = _b64(json.dumps(header).encode())
    body = _b64(json.dumps(payload).encode())
    return f"{head}.{body}.{_b64(signature)}"


def _private_key(key_dir: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key((key_dir / KEY_FILE).read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    return key


def _claims(**changes: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": "phi-engine",
        "aud": "phi-engine-api",
        "sub": "cl_0123456789abcdef",
        "iat": int(NOW),
        "exp": int(NOW) + 3600,
        "jti": "a" * 32,
        "scope": "infer",
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def _signed(issuer: TokenIssuer, key_dir: Path, payload: dict[str, Any], **header: Any) -> str:
    """A token signed with the real key: only the claims or header are wrong.

    Signed by hand, since PyJWT refuses to encode some of the malformed claims.
    """
    headers = {"alg": "EdDSA", "kid": issuer.kid, "typ": "at+jwt", **header}
    unsigned = _compact({k: v for k, v in headers.items() if v is not None}, payload)[:-1]
    signature = _private_key(key_dir).sign(unsigned.encode())
    return f"{unsigned}.{_b64(signature)}"


# ---- issue and verify -------------------------------------------------------------------------


def test_issue_then_verify_round_trip(issuer: TokenIssuer) -> None:
    body = issuer.issue(_client("infer", "models:read"))
    assert set(body) == {"access_token", "expires_in", "token_type", "scope"}
    assert body["expires_in"] == 3600
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "models:read infer"

    claims = issuer.verify(body["access_token"])
    assert claims == TokenClaims(
        sub="cl_0123456789abcdef",
        scopes=("models:read", "infer"),
        jti=claims.jti,
        iat=int(NOW),
        exp=int(NOW) + 3600,
    )
    assert len(claims.jti) == 32


def test_the_token_is_a_typed_eddsa_jwt_with_every_claim(issuer: TokenIssuer) -> None:
    header, payload, _ = _parts(issuer.issue(_client())["access_token"])
    assert header == {"alg": "EdDSA", "typ": "at+jwt", "kid": issuer.kid}
    assert {"iss", "aud", "sub", "exp", "iat", "jti", "scope"} <= set(payload)
    assert (payload["iss"], payload["aud"]) == ("phi-engine", "phi-engine-api")


def test_each_token_has_its_own_jti(issuer: TokenIssuer) -> None:
    tokens = [issuer.issue(_client())["access_token"] for _ in range(5)]
    assert len({issuer.verify(t).jti for t in tokens}) == 5


def test_lifetime_is_configurable(key_dir: Path, clock: Clock) -> None:
    short = TokenIssuer(key_dir, lifetime_s=60, clock=clock)
    body = short.issue(_client())
    assert body["expires_in"] == 60
    assert short.verify(body["access_token"]).exp == int(NOW) + 60


def test_a_disabled_client_gets_no_token(issuer: TokenIssuer) -> None:
    with pytest.raises(UnauthorizedError):
        issuer.issue(_client("infer", disabled=True))


# ---- keys -------------------------------------------------------------------------------------


def test_keys_persist_across_instances(key_dir: Path, clock: Clock) -> None:
    first = TokenIssuer(key_dir, clock=clock)
    token = first.issue(_client())["access_token"]
    path = key_dir / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not stat.S_IMODE(key_dir.stat().st_mode) & 0o077
    assert [p.name for p in key_dir.iterdir()] == [KEY_FILE]  # no temporary file left behind

    second = TokenIssuer(key_dir, clock=clock)
    assert second.kid == first.kid
    assert second.verify(token).sub == "cl_0123456789abcdef"
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


def test_concurrent_first_starts_share_one_key(key_dir: Path) -> None:
    barrier = threading.Barrier(8)
    kids: list[str] = []

    def start() -> None:
        barrier.wait()
        kids.append(TokenIssuer(key_dir).kid)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(kids) == 8 and len(set(kids)) == 1
    assert TokenIssuer(key_dir).kid == kids[0]


def test_another_key_dir_means_another_key(
    tmp_path: Path, issuer: TokenIssuer, clock: Clock
) -> None:
    other = TokenIssuer(tmp_path / "elsewhere", clock=clock)
    assert other.kid != issuer.kid
    with pytest.raises(UnauthorizedError):
        issuer.verify(other.issue(_client())["access_token"])


def test_public_jwks_matches_the_signing_key(issuer: TokenIssuer, key_dir: Path) -> None:
    jwks = issuer.public_jwks()
    (key,) = jwks["keys"]
    assert {k: key[k] for k in ("kty", "crv", "alg", "use", "kid")} == {
        "kty": "OKP",
        "crv": "Ed25519",
        "alg": "EdDSA",
        "use": "sig",
        "kid": issuer.kid,
    }
    assert "d" not in key  # never the private part
    public = Ed25519PublicKey.from_public_bytes(_unb64(key["x"]))
    token = issuer.issue(_client())["access_token"]
    # A third party can verify with the JWKS alone.
    jwt.decode(
        token,
        public,
        algorithms=["EdDSA"],
        audience="phi-engine-api",
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
    )
    # kid: the first 16 hex digits of SHA-256 over the RFC 7638 thumbprint input.
    canonical = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": key["x"]}, separators=(",", ":"))
    assert key["kid"] == hashlib.sha256(canonical.encode()).hexdigest()[:16]


# ---- attacks: each is a 401 -------------------------------------------------------------------


def test_alg_none_is_refused(issuer: TokenIssuer) -> None:
    header = {"alg": "none", "typ": "at+jwt", "kid": issuer.kid}
    for variant in ("none", "None", "NONE"):
        with pytest.raises(UnauthorizedError):
            issuer.verify(_compact({**header, "alg": variant}, _claims()))


def test_hs256_signed_with_the_public_key_is_refused(issuer: TokenIssuer) -> None:
    """Algorithm confusion (RFC 8725 §2.1): an HMAC keyed with what the attacker can know."""
    (jwk,) = issuer.public_jwks()["keys"]
    public = Ed25519PublicKey.from_public_bytes(_unb64(jwk["x"]))
    keys = [
        _unb64(jwk["x"]),
        jwk["x"].encode(),
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    ]
    for key in keys:
        header = {"alg": "HS256", "typ": "at+jwt", "kid": issuer.kid}
        unsigned = _compact(header, _claims(scope="admin")).rsplit(".", 1)[0]
        signature = hmac.new(key, unsigned.encode(), hashlib.sha256).digest()
        with pytest.raises(UnauthorizedError):
            issuer.verify(f"{unsigned}.{_b64(signature)}")


def test_a_tampered_payload_is_refused(issuer: TokenIssuer) -> None:
    token = issuer.issue(_client("infer"))["access_token"]
    head, _, signature = token.split(".")
    _, payload, _ = _parts(token)
    for change in ({"scope": "admin"}, {"sub": "cl_ffffffffffffffff"}, {"exp": payload["exp"] + 1}):
        forged = _b64(json.dumps({**payload, **change}).encode())
        with pytest.raises(UnauthorizedError, match="signature"):
            issuer.verify(f"{head}.{forged}.{signature}")


def test_a_tampered_signature_or_header_is_refused(issuer: TokenIssuer) -> None:
    token = issuer.issue(_client())["access_token"]
    head, body, signature = token.split(".")
    flipped = bytearray(_unb64(signature))
    flipped[0] ^= 1
    with pytest.raises(UnauthorizedError):
        issuer.verify(f"{head}.{body}.{_b64(bytes(flipped))}")
    header, _, _ = _parts(token)
    with pytest.raises(UnauthorizedError):
        issuer.verify(f"{_b64(json.dumps({**header, 'x': 1}).encode())}.{body}.{signature}")


def test_an_unknown_kid_is_refused(issuer: TokenIssuer, key_dir: Path) -> None:
    stranger = Ed25519PrivateKey.generate()
    headers = {"kid": "0000000000000000", "typ": "at+jwt"}
    with pytest.raises(UnauthorizedError, match="unknown key"):
        issuer.verify(jwt.encode(_claims(), stranger, algorithm="EdDSA", headers=headers))
    # Our kid on a stranger's signature fails on the signature.
    headers["kid"] = issuer.kid
    with pytest.raises(UnauthorizedError, match="signature"):
        issuer.verify(jwt.encode(_claims(), stranger, algorithm="EdDSA", headers=headers))
    # And our key with a missing kid is refused too.
    no_kid = jwt.encode(
        _claims(), _private_key(key_dir), algorithm="EdDSA", headers={"typ": "at+jwt"}
    )
    with pytest.raises(UnauthorizedError):
        issuer.verify(no_kid)


def test_an_expired_token_is_refused(issuer: TokenIssuer, clock: Clock) -> None:
    token = issuer.issue(_client())["access_token"]
    clock.now = NOW + 3599
    assert issuer.verify(token).exp == int(NOW) + 3600
    clock.now = NOW + 3600
    with pytest.raises(UnauthorizedError, match="expired"):
        issuer.verify(token)
    clock.now = NOW + 10 * 86400
    with pytest.raises(UnauthorizedError, match="expired"):
        issuer.verify(token)


def test_a_token_from_the_future_is_refused_beyond_the_leeway(
    key_dir: Path, issuer: TokenIssuer
) -> None:
    ahead = TokenIssuer(key_dir, clock=Clock(NOW + 30))
    assert issuer.verify(ahead.issue(_client())["access_token"])  # within 60 s of skew
    far = TokenIssuer(key_dir, clock=Clock(NOW + 120))
    with pytest.raises(UnauthorizedError, match="not valid yet"):
        issuer.verify(far.issue(_client())["access_token"])
    nbf_later = _signed(issuer, key_dir, _claims(nbf=int(NOW) + 600))
    with pytest.raises(UnauthorizedError, match="not valid yet"):
        issuer.verify(nbf_later)


def test_wrong_audience_or_issuer_is_refused(
    key_dir: Path, issuer: TokenIssuer, clock: Clock
) -> None:
    other_aud = TokenIssuer(key_dir, audience="another-api", clock=clock)
    with pytest.raises(UnauthorizedError):
        issuer.verify(other_aud.issue(_client())["access_token"])
    other_iss = TokenIssuer(key_dir, issuer="someone-else", clock=clock)
    with pytest.raises(UnauthorizedError):
        issuer.verify(other_iss.issue(_client())["access_token"])
    for change in ({"aud": ["another-api"]}, {"iss": ["phi-engine"]}, {"aud": 7}):
        with pytest.raises(UnauthorizedError):
            issuer.verify(_signed(issuer, key_dir, _claims(**change)))


@pytest.mark.parametrize("claim", ["iss", "aud", "sub", "exp", "iat", "jti", "scope"])
def test_a_missing_claim_is_refused(issuer: TokenIssuer, key_dir: Path, claim: str) -> None:
    assert issuer.verify(_signed(issuer, key_dir, _claims()))  # the control passes
    with pytest.raises(UnauthorizedError):
        issuer.verify(_signed(issuer, key_dir, _claims(**{claim: None})))


@pytest.mark.parametrize(
    "change",
    [
        {"exp": "tomorrow"},
        {"exp": True},
        {"iat": float("nan")},
        {"sub": ""},
        {"sub": 42},
        {"jti": ""},
        {"scope": ["infer"]},
        {"scope": "infer root"},
    ],
)
def test_a_malformed_claim_is_refused(
    issuer: TokenIssuer, key_dir: Path, change: dict[str, Any]
) -> None:
    with pytest.raises(UnauthorizedError):
        issuer.verify(_signed(issuer, key_dir, _claims(**change)))


@pytest.mark.parametrize("header", [{"typ": "JWT"}, {"typ": None}, {"crit": ["exp"]}])
def test_untyped_or_critical_headers_are_refused(
    issuer: TokenIssuer, key_dir: Path, header: dict[str, Any]
) -> None:
    with pytest.raises(UnauthorizedError):
        issuer.verify(_signed(issuer, key_dir, _claims(), **header))


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "..", "x" * 10_000, "e30.e30.", "😀.😀.😀"])
def test_garbage_is_refused(issuer: TokenIssuer, token: str) -> None:
    with pytest.raises(UnauthorizedError):
        issuer.verify(token)


# ---- scopes -----------------------------------------------------------------------------------


def test_requested_scopes_must_be_a_subset_of_the_clients(issuer: TokenIssuer) -> None:
    client = _client("infer", "models:read")
    body = issuer.issue(client, ["infer"])
    assert body["scope"] == "infer"
    assert issuer.verify(body["access_token"]).scopes == ("infer",)
    assert issuer.issue(client, None)["scope"] == "models:read infer"
    assert issuer.issue(client, [])["scope"] == "models:read infer"
    for asked in (["deploy"], ["infer", "admin"], ["no-such-scope"]):
        with pytest.raises(InvalidRequestError) as caught:
            issuer.issue(client, asked)
        assert caught.value.field == "scope"


def test_an_admin_client_may_ask_for_any_scope(issuer: TokenIssuer) -> None:
    admin = _client("admin")
    assert issuer.issue(admin, ["deploy", "infer"])["scope"] == "deploy infer"
    with pytest.raises(InvalidRequestError):
        issuer.issue(admin, ["root"])


def test_require_scope() -> None:
    claims = TokenClaims(sub="cl_x", scopes=("infer", "logs:read"), jti="j", iat=0, exp=1)
    require_scope(claims, "infer")
    require_scope(claims, "logs:read")
    with pytest.raises(ForbiddenError, match="deploy") as caught:
        require_scope(claims, "deploy")
    assert caught.value.status == 403


def test_admin_passes_every_scope() -> None:
    admin = TokenClaims(sub="cl_x", scopes=("admin",), jti="j", iat=0, exp=1)
    for scope in SCOPES:
        require_scope(admin, scope)
    with pytest.raises(ForbiddenError):
        require_scope(TokenClaims(sub="cl_x", scopes=(), jti="j", iat=0, exp=1), "infer")


# ---- rate limiting ----------------------------------------------------------------------------


def test_burst_then_refusal_with_a_sensible_retry_after() -> None:
    clock = Clock(0.0)
    limiter = RateLimiter(rate_per_s=2.0, burst=5, clock=clock)
    for _ in range(5):
        limiter.check("cl_a")
    with pytest.raises(RateLimitedError) as caught:
        limiter.check("cl_a")
    assert caught.value.status == 429
    assert caught.value.code == "rate_limited"
    # The refused call cost a token too (debt -1): a whole token back takes 1 s at 2 per second.
    assert caught.value.retry_after_s == pytest.approx(1.0)
    clock.now = 0.25  # hammering while limited digs deeper: -1 + 0.5 - 1 = -1.5
    with pytest.raises(RateLimitedError) as again:
        limiter.check("cl_a")
    assert again.value.retry_after_s == pytest.approx(1.25)
    clock.now = 0.25 + 1.25  # Retry-After is honest: waiting it out is enough
    limiter.check("cl_a")
    for _ in range(20):  # the debt is bounded by one burst: a flood never locks out for long
        with pytest.raises(RateLimitedError) as deep:
            limiter.check("cl_a")
    assert deep.value.retry_after_s == pytest.approx((1 + 5) / 2.0)


def test_buckets_refill_over_time() -> None:
    clock = Clock(0.0)
    limiter = RateLimiter(rate_per_s=1.0, burst=3, clock=clock)
    for _ in range(3):
        limiter.check("k")
    clock.now = 1.0
    limiter.check("k")  # one token back after one second
    with pytest.raises(RateLimitedError):
        limiter.check("k")
    clock.now = 100.0  # refills only up to the burst
    for _ in range(3):
        limiter.check("k")
    with pytest.raises(RateLimitedError):
        limiter.check("k")


def test_a_clock_stepping_back_grants_nothing() -> None:
    clock = Clock(10.0)
    limiter = RateLimiter(rate_per_s=1.0, burst=1, clock=clock)
    limiter.check("k")
    clock.now = 5.0
    with pytest.raises(RateLimitedError):
        limiter.check("k")


def test_keys_are_independent() -> None:
    limiter = RateLimiter(rate_per_s=1.0, burst=2, clock=Clock(0.0))
    limiter.check("addr:10.0.0.1")
    limiter.check("addr:10.0.0.1")
    with pytest.raises(RateLimitedError):
        limiter.check("addr:10.0.0.1")
    limiter.check("addr:10.0.0.2")
    limiter.check("client:cl_a")


def test_memory_is_bounded() -> None:
    clock = Clock(0.0)
    limiter = RateLimiter(rate_per_s=1.0, burst=2, clock=clock, max_keys=100)
    for i in range(10_000):
        limiter.check(f"addr:{i}")
        assert len(limiter) <= 100
    # Idle keys (buckets full again) are forgotten as soon as time passes.
    clock.now = 2.0
    limiter.check("late")
    assert len(limiter) == 1


def test_active_keys_are_kept_while_idle_ones_go() -> None:
    clock = Clock(0.0)
    limiter = RateLimiter(rate_per_s=1.0, burst=1, clock=clock, max_keys=1000)
    limiter.check("busy")
    for i in range(50):
        clock.now = 0.01 * i
        limiter.check(f"once:{i}")
    with pytest.raises(RateLimitedError):
        limiter.check("busy")  # still remembered: not yet refilled


def test_limits_are_enforced_across_threads() -> None:
    limiter = RateLimiter(rate_per_s=1e-6, burst=50, clock=Clock(0.0))
    allowed: list[int] = []

    def hammer() -> None:
        for _ in range(20):
            try:
                limiter.check("shared")
                allowed.append(1)
            except RateLimitedError:
                pass

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(allowed) == 50


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (1.0, 0), (float("nan"), 1)])
def test_bad_limits_are_refused(rate: float, burst: int) -> None:
    with pytest.raises(InvalidRequestError):
        RateLimiter(rate, burst)


def test_issuer_refuses_a_bad_lifetime(key_dir: Path) -> None:
    with pytest.raises(InvalidRequestError):
        TokenIssuer(key_dir, lifetime_s=0)


def test_key_file_is_not_world_readable_even_with_a_loose_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        issuer = TokenIssuer(tmp_path / "keys")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "keys" / KEY_FILE).stat().st_mode) == 0o600
    assert issuer.kid


def test_a_key_file_of_another_type_is_refused(key_dir: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    key_dir.mkdir(parents=True)
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (key_dir / KEY_FILE).write_bytes(pem)
    with pytest.raises(UnsupportedError, match="not an Ed25519 key"):
        TokenIssuer(key_dir)
