"""JWT attacks over real HTTP: every forged, altered or misdirected token is answered 401.

The target is ``GET /v1/models`` (scope ``models:read``). Tokens are built by hand (compact JWS,
RFC 7515 §7.1) so that each attack controls every byte; the ones that need the server's own
private key read it from ``home/keys`` as the server does. A positive control (a token forged
with the server's key and correct claims) proves the forging helper makes tokens the server
accepts, so each 401 is due to the one thing the attack changed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from phi_engine.security._tokens import KEY_FILE
from phi_test_models.tiny import mlp

from .conftest import Server

ROUTE = "/v1/models"


# ---- building tokens ---------------------------------------------------------------------------


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def segment(obj: Any) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def forge(header: dict[str, Any], payload: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    signing_input = f"{segment(header)}.{segment(payload)}"
    return f"{signing_input}.{b64url(sign(signing_input.encode('ascii')))}"


def server_key(server: Server) -> Ed25519PrivateKey:
    """The server's own signing key, from the PKCS #8 PEM file under ``home/keys``."""
    key = serialization.load_pem_private_key(
        (server.engine.home / "keys" / KEY_FILE).read_bytes(), password=None
    )
    assert isinstance(key, Ed25519PrivateKey)
    return key


def good_header(server: Server) -> dict[str, Any]:
    return {"alg": "EdDSA", "typ": "at+jwt", "kid": server.engine.tokens.kid}


def good_claims(server: Server, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": server.engine.tokens.issuer,
        "aud": server.engine.tokens.audience,
        "sub": server.client_id,
        "client_id": server.client_id,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": "f" * 32,
        "scope": "models:read",
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def get(server: Server, token: str) -> httpx.Response:
    return httpx.get(
        f"{server.url}{ROUTE}", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


def assert_unauthorized(server: Server, r: httpx.Response) -> None:
    """401, API.md's JSON error body, and nothing of the internals in it."""
    assert r.status_code == 401, (r.status_code, r.text)
    assert r.headers["content-type"].split(";")[0] == "application/json"
    body = r.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) <= {"code", "message", "field"}, body
    assert body["error"]["code"] == "unauthorized", body
    message = body["error"]["message"]
    assert isinstance(message, str) and 0 < len(message) < 300, body
    pem = (server.engine.home / "keys" / KEY_FILE).read_text()
    secret_b64 = "".join(pem.strip().splitlines()[1:-1])
    for leak in (
        "Traceback",
        'File "',
        "site-packages",
        "phi_engine.",
        "jwt.exceptions",
        str(server.engine.home),
        secret_b64,
        server.client_secret,
    ):
        assert leak not in r.text, (leak, r.text)


# ---- the server's keys and a stranger's ------------------------------------------------------


@pytest.fixture
def keys(server: Server) -> dict[str, Any]:
    private = server_key(server)
    public = private.public_key()
    jwks = server.engine.tokens.public_jwks()
    stranger = Ed25519PrivateKey.generate()
    return {
        "private": private,
        "public_pem": public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "public_raw": public.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        ),
        "jwks": jwks,
        "x": jwks["keys"][0]["x"],
        "stranger": stranger,
    }


def test_the_forging_helper_makes_tokens_the_server_accepts(server: Server, keys: dict) -> None:
    # The positive control: without it every 401 below could be the helper's fault.
    assert server.engine.tokens.public_jwks()["keys"][0]["kid"] == server.engine.tokens.kid
    token = forge(good_header(server), good_claims(server), keys["private"].sign)
    r = get(server, token)
    assert r.status_code == 200, r.text
    # ... and a token the server issued, altered by nothing, is accepted too.
    assert get(server, server.token("models:read")).status_code == 200


# ---- alg: none and algorithm confusion -------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none_is_refused(server: Server, alg: str) -> None:
    header = {**good_header(server), "alg": alg}
    unsigned = forge(header, good_claims(server, scope="admin"), lambda _: b"")
    assert unsigned.endswith(".")
    assert_unauthorized(server, get(server, unsigned))
    # The same with the trailing dot dropped, and with a real token's signature kept.
    assert_unauthorized(server, get(server, unsigned.rstrip(".")))
    real_sig = server.token("models:read").rsplit(".", 1)[1]
    assert_unauthorized(server, get(server, unsigned + real_sig))


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
@pytest.mark.parametrize("secret", ["public_pem", "public_raw", "x", "jwks"])
def test_hmac_keyed_with_the_public_key_is_refused(
    server: Server, keys: dict, alg: str, secret: str
) -> None:
    """RFC 8725 §2.1: the classic confusion, HMAC keyed with whatever form the public key has."""
    value = keys[secret]
    key = (
        value
        if isinstance(value, bytes)
        else (value.encode() if isinstance(value, str) else json.dumps(value).encode())
    )
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    for header in ({**good_header(server), "alg": alg}, {"alg": alg, "typ": "at+jwt"}):
        token = forge(header, good_claims(server), lambda m: hmac.new(key, m, digest).digest())
        assert_unauthorized(server, get(server, token))
    # And an HMAC signature under a header that still claims EdDSA.
    token = forge(
        good_header(server), good_claims(server), lambda m: hmac.new(key, m, digest).digest()
    )
    assert_unauthorized(server, get(server, token))


@pytest.mark.parametrize("alg", ["ES256", "RS256", "PS256", "Ed25519", "ed25519", "eddsa"])
def test_other_alg_names_with_a_valid_ed25519_signature_are_refused(
    server: Server, keys: dict, alg: str
) -> None:
    header = {**good_header(server), "alg": alg}
    assert_unauthorized(
        server, get(server, forge(header, good_claims(server), keys["private"].sign))
    )


# ---- claims: time, issuer, audience -----------------------------------------------------------


@pytest.mark.parametrize("ago", [1, 61, 3600, 10**6])
def test_expired_tokens_signed_with_the_servers_own_key_are_refused(
    server: Server, keys: dict, ago: int
) -> None:
    now = int(time.time())
    claims = good_claims(server, iat=now - ago - 3600, nbf=now - ago - 3600, exp=now - ago)
    assert_unauthorized(
        server, get(server, forge(good_header(server), claims, keys["private"].sign))
    )


def test_tokens_not_valid_yet_are_refused(server: Server, keys: dict) -> None:
    now = int(time.time())
    for changes in ({"nbf": now + 600}, {"iat": now + 600, "nbf": None}):
        claims = good_claims(server, exp=now + 3600, **changes)
        token = forge(good_header(server), claims, keys["private"].sign)
        assert_unauthorized(server, get(server, token))


@pytest.mark.parametrize(
    "aud", ["other-api", "", ["other-api"], [], "PHI-ENGINE-API", "phi-engine-api "]
)
def test_wrong_audience_is_refused(server: Server, keys: dict, aud: Any) -> None:
    claims = good_claims(server, aud=aud)
    assert_unauthorized(
        server, get(server, forge(good_header(server), claims, keys["private"].sign))
    )


@pytest.mark.parametrize("iss", ["other-issuer", "", "PHI-ENGINE", ["phi-engine"], 1])
def test_wrong_issuer_is_refused(server: Server, keys: dict, iss: Any) -> None:
    claims = good_claims(server, iss=iss)
    assert_unauthorized(
        server, get(server, forge(good_header(server), claims, keys["private"].sign))
    )


@pytest.mark.parametrize("claim", ["iss", "aud", "sub", "exp", "iat", "jti", "scope"])
def test_a_token_missing_a_required_claim_is_refused(
    server: Server, keys: dict, claim: str
) -> None:
    claims = good_claims(server)
    del claims[claim]
    assert_unauthorized(
        server, get(server, forge(good_header(server), claims, keys["private"].sign))
    )


@pytest.mark.parametrize(
    "changes",
    [
        {"exp": "9999999999"},
        {"exp": True},
        {"exp": float("inf")},
        {"exp": float("nan")},
        {"iat": None, "nbf": float("nan")},
        {"scope": ["admin"]},
        {"scope": "admin root"},
        {"sub": ""},
        {"jti": 7},
    ],
    ids=repr,
)
def test_ill_typed_claims_are_refused(server: Server, keys: dict, changes: dict[str, Any]) -> None:
    # json.dumps writes inf/nan as Infinity/NaN, which Python's json (and PyJWT) parse back.
    claims = good_claims(server, **changes)
    if "iat" in changes and changes["iat"] is None:
        claims.pop("iat", None)
    assert_unauthorized(
        server, get(server, forge(good_header(server), claims, keys["private"].sign))
    )


# ---- tampering, keys and headers -----------------------------------------------------------------


@pytest.mark.parametrize("scope", ["models:read", "admin", "models:read infer"])
def test_a_tampered_payload_keeping_the_signature_is_refused(server: Server, scope: str) -> None:
    """A real token for ``infer`` only, its scope rewritten: 401 (the signature), never 403/200."""
    header, payload, signature = server.token("infer").split(".")
    claims = json.loads(unb64url(payload))
    assert claims["scope"] == "infer"
    claims["scope"] = scope
    assert_unauthorized(server, get(server, f"{header}.{segment(claims)}.{signature}"))
    # Re-encoding the same claims with other JSON spacing changes the signed bytes too.
    claims["scope"] = "infer"
    respaced = b64url(json.dumps(claims, indent=1).encode())
    assert_unauthorized(server, get(server, f"{header}.{respaced}.{signature}"))


def test_a_tampered_signature_or_header_is_refused(server: Server) -> None:
    header, payload, signature = server.token("models:read").split(".")
    raw = bytearray(unb64url(signature))
    raw[0] ^= 1
    assert_unauthorized(server, get(server, f"{header}.{payload}.{b64url(bytes(raw))}"))
    assert_unauthorized(server, get(server, f"{header}.{payload}.{signature[:-4]}"))
    assert_unauthorized(server, get(server, f"{header}.{payload}."))
    assert_unauthorized(server, get(server, f"{header}.{payload}"))
    # A header changed in a way the server would accept (typ spelled the long way) is still
    # part of the signed input.
    changed = json.loads(unb64url(header))
    changed["typ"] = "application/at+jwt"
    assert_unauthorized(server, get(server, f"{segment(changed)}.{payload}.{signature}"))


@pytest.mark.parametrize(
    "kid", ["0000000000000000", "", None, 0, ["x"], "../../keys/jwt_ed25519.pem"]
)
def test_unknown_kid_is_refused(server: Server, keys: dict, kid: Any) -> None:
    header = {**good_header(server), "kid": kid}
    if kid is None:
        del header["kid"]
    assert_unauthorized(
        server, get(server, forge(header, good_claims(server), keys["private"].sign))
    )


def test_a_token_signed_by_another_ed25519_key_is_refused(server: Server, keys: dict) -> None:
    stranger: Ed25519PrivateKey = keys["stranger"]
    x = b64url(
        stranger.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
    )
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": x}
    headers = [
        good_header(server),  # pretending to be the server's key
        {**good_header(server), "kid": "stranger"},
        # CVE-2018-0114 style: the verification key embedded in the token itself.
        {**good_header(server), "jwk": jwk},
        {"alg": "EdDSA", "typ": "at+jwt", "jwk": jwk},
        {**good_header(server), "jku": "http://127.0.0.1:1/jwks.json"},
        {**good_header(server), "x5u": "http://127.0.0.1:1/cert.pem"},
    ]
    for header in headers:
        token = forge(header, good_claims(server, scope="admin"), stranger.sign)
        assert_unauthorized(server, get(server, token))


@pytest.mark.parametrize(
    "typ", [None, "JWT", "jwt", "at+JWT ", "application/jwt", "JOSE"], ids=repr
)
def test_tokens_that_are_not_access_tokens_are_refused(
    server: Server, keys: dict, typ: str | None
) -> None:
    """RFC 8725 §3.11 / RFC 9068 §2.1: explicit typing keeps other JWTs from passing as ours."""
    header = {**good_header(server), "typ": typ}
    if typ is None:
        del header["typ"]
    assert_unauthorized(
        server, get(server, forge(header, good_claims(server), keys["private"].sign))
    )


def test_crit_headers_and_malformed_tokens_are_refused(server: Server, keys: dict) -> None:
    header = {**good_header(server), "crit": ["exp"], "exp": 1}
    assert_unauthorized(
        server, get(server, forge(header, good_claims(server), keys["private"].sign))
    )
    sign = keys["private"].sign
    padded = forge(good_header(server), good_claims(server, pad="A" * 9000), sign)
    assert_unauthorized(server, get(server, padded))  # over the length limit
    for junk in [
        "a.b.c",
        "....",
        "e30.e30.",
        f"{b64url(b'[]')}.{segment(good_claims(server))}.AAAA",
        f"{b64url(b'null')}.{segment(good_claims(server))}.AAAA",
        f"{segment(good_header(server))}.{b64url(b'[1]')}.AAAA",
        f"{segment(good_header(server))}.{b64url(bytes([0xFF, 0xFE]))}.AAAA",
        "%00.%00.%00",
    ]:
        assert_unauthorized(server, get(server, junk))
    # A payload that is a JSON array, properly signed: still 401, never a 500.
    for payload in (b"[1]", b"null", b'"s"'):
        signing_input = f"{segment(good_header(server))}.{b64url(payload)}"
        token = f"{signing_input}.{b64url(sign(signing_input.encode()))}"
        assert_unauthorized(server, get(server, token))


@pytest.mark.parametrize(
    "value",
    ["Bearer", "Basic dXNlcjpwYXNz", "bearer", "Token abc", "Bearer a b"],
)
def test_malformed_authorization_headers_are_refused(server: Server, value: str) -> None:
    r = httpx.get(f"{server.url}{ROUTE}", headers={"Authorization": value}, timeout=30)
    assert_unauthorized(server, r)


def test_401_carries_a_bearer_challenge(server: Server) -> None:
    """RFC 6750 §3 and RFC 9110 §15.5.2: a 401 MUST carry WWW-Authenticate."""
    for headers in ({}, {"Authorization": "Bearer nope"}):
        r = httpx.get(f"{server.url}{ROUTE}", headers=headers, timeout=30)
        assert r.status_code == 401
        assert r.headers.get("www-authenticate", "").lower().startswith("bearer"), r.headers


# ---- the token endpoint --------------------------------------------------------------------------


def token_request(server: Server, client_id: str, secret: str) -> httpx.Response:
    body = {"client_id": client_id, "client_secret": secret, "grant_type": "client_credentials"}
    return httpx.post(f"{server.url}/v1/auth/token", json=body, timeout=30)


def test_a_wrong_client_secret_is_401_invalid_client(server: Server) -> None:
    wrong = token_request(server, server.client_id, "wrong-" + server.client_secret)
    assert wrong.status_code == 401
    assert wrong.json()["error"] == "invalid_client"
    assert set(wrong.json()) <= {"error", "error_description", "error_uri"}
    assert wrong.headers["cache-control"] == "no-store"
    assert "access_token" not in wrong.text and server.client_secret not in wrong.text
    # An unknown client id gets the very same answer (no client enumeration).
    unknown = token_request(server, "cl_0000000000000000", "whatever")
    assert unknown.status_code == 401 and unknown.json() == wrong.json()
    # A prefix of the right secret, and the right secret with a suffix, are wrong secrets.
    for secret in (server.client_secret[:-1], server.client_secret + "x"):
        r = token_request(server, server.client_id, secret)
        assert r.status_code == 401 and r.json()["error"] == "invalid_client"


def wait_for_429(send: Callable[[int], httpx.Response], limit: int = 40) -> list[int]:
    codes: list[int] = []
    for i in range(limit):
        r = send(i)
        codes.append(r.status_code)
        if r.status_code == 429:
            retry = r.headers.get("retry-after", "")
            assert retry.isdigit() and 1 <= int(retry) <= 60, r.headers
            assert r.json()["error"] in ("temporarily_unavailable", "slow_down"), r.text
            assert r.headers["cache-control"] == "no-store"
            return codes
    raise AssertionError(f"no 429 after {limit} wrong secrets: {codes}")


def test_repeated_wrong_secrets_hit_429_with_retry_after(server: Server) -> None:
    codes = wait_for_429(lambda _: token_request(server, server.client_id, "wrong"))
    limited_at = time.monotonic()
    assert set(codes[:-1]) == {401} and codes[-1] == 429
    # While limited, even the right secret is refused (the guesser learns nothing): the refused
    # call put the bucket into debt, so the next one needs a full refill period (1/rate = 0.5 s).
    r = token_request(server, server.client_id, server.client_secret)
    if r.status_code != 429:  # only a machine that took a whole refill period to send it
        assert time.monotonic() - limited_at >= 0.5, r.text
        codes = wait_for_429(lambda _: token_request(server, server.client_id, "wrong"))
        r = token_request(server, server.client_id, server.client_secret)
    assert r.status_code == 429 and "access_token" not in r.text
    # Retry-After is honest: after it, the right secret is served again.
    time.sleep(int(r.headers["retry-after"]) + 0.2)
    assert token_request(server, server.client_id, server.client_secret).status_code == 200


def test_rotating_client_ids_from_one_address_is_limited_too(server: Server) -> None:
    codes = wait_for_429(lambda i: token_request(server, f"cl_{i:016x}", "wrong"))
    assert set(codes[:-1]) == {401}


def test_basic_auth_guessing_is_limited_too(server: Server) -> None:
    def send(_: int) -> httpx.Response:
        return httpx.post(
            f"{server.url}/v1/auth/token",
            data={"grant_type": "client_credentials"},
            auth=(server.client_id, "wrong"),
            timeout=30,
        )

    codes = wait_for_429(send)
    assert set(codes[:-1]) == {401}


# ---- scopes ---------------------------------------------------------------------------------


def test_an_infer_only_client_gets_403_on_register(server: Server, tmp_path: Path) -> None:
    infer_only = server.engine.clients.create(["infer"], name="infer-only")
    r = token_request(server, infer_only.client_id, infer_only.client_secret)
    assert r.status_code == 200, r.text
    assert r.json()["scope"] == "infer"
    headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
    body = {
        "model_name": "m",
        "framework": "onnx",
        "version": "1",
        "storage_url": mlp(tmp_path / "m.onnx").as_uri(),
    }
    r = httpx.post(f"{server.url}/v1/models/register", json=body, headers=headers, timeout=30)
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "forbidden" and r.json()["error"]["field"] == "scope"
    assert server.engine.models() == []
    # The scope check comes before the body is validated: a bad body is still 403, not 400.
    r = httpx.post(
        f"{server.url}/v1/models/register", json={"colour": 1}, headers=headers, timeout=30
    )
    assert r.status_code == 403, r.text
    # ... and with no token at all, 401 before anything about the body is said.
    r = httpx.post(f"{server.url}/v1/models/register", json={"colour": 1}, timeout=30)
    assert_unauthorized(server, r)
    # The client cannot widen its scope at the token endpoint either.
    body2 = {
        "client_id": infer_only.client_id,
        "client_secret": infer_only.client_secret,
        "grant_type": "client_credentials",
        "scope": "models:write",
    }
    r = httpx.post(f"{server.url}/v1/auth/token", json=body2, timeout=30)
    assert r.status_code == 400 and r.json()["error"] == "invalid_scope", r.text
