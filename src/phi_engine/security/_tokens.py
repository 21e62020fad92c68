"""JWT access tokens (RFC 7519, profiled by RFC 9068), signed with one persisted Ed25519 key.

Following RFC 8725 (JWT best current practice): one asymmetric algorithm, EdDSA, is the only one
accepted (§3.1: no ``none``, no HMAC keyed with the public key); the header's ``typ`` is
checked (§3.11); ``iss`` and ``aud`` are checked (§3.8, §3.9); every claim we rely on is required.
Time claims are checked against an injectable clock, so expiry is testable without sleeping.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from phi_engine.errors import (
    ForbiddenError,
    InvalidRequestError,
    UnauthorizedError,
    UnsupportedError,
)
from phi_engine.security._clients import SCOPES, Client

__all__ = ["TokenClaims", "TokenIssuer", "require_scope"]

KEY_FILE = "jwt_ed25519.pem"
_ALG = "EdDSA"
_TYP = "at+jwt"  # RFC 9068 §2.1
_LEEWAY_S = 60  # clock skew allowed on iat and nbf (RFC 7519 §4.1.5)
_MAX_TOKEN_CHARS = 8192  # refuse before parsing: a token is a few hundred characters
_REQUIRED = ["iss", "aud", "sub", "exp", "iat", "jti", "scope"]


@dataclass(frozen=True)
class TokenClaims:
    """The verified claims of an access token.

    Attributes:
        sub: The client id the token was issued to.
        scopes: The scopes granted (``scope`` claim, RFC 8693 §4.2).
        jti: The token's unique id.
        iat: Issued at, seconds since the epoch.
        exp: Expires at, seconds since the epoch.
    """

    sub: str
    scopes: tuple[str, ...]
    jti: str
    iat: int
    exp: int


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _write_private(path: Path, pem: bytes) -> None:
    """Write ``pem`` to ``path`` mode 0600, atomically and without replacing an existing file.

    The temporary file is linked into place (a rename that fails if the target exists), so two
    processes starting at once end up sharing one key instead of each overwriting the other's.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
        os.fchmod(f.fileno(), 0o600)  # whatever the umask
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass  # another process won; its key is loaded below
    finally:
        tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the new directory entry durable
    finally:
        os.close(dir_fd)


def _load_or_create_key(key_dir: Path) -> Ed25519PrivateKey:
    key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = key_dir / KEY_FILE
    if not path.exists():
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write_private(path, pem)
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise UnsupportedError(f"{str(path)!r} holds a {type(key).__name__}, not an Ed25519 key")
    return key


class TokenIssuer:
    """Issues and verifies the HTTP API's access tokens.

    The Ed25519 key pair is generated on first start and kept in ``key_dir`` (private key as PKCS #8
    PEM, mode 0600); later instances load it, so tokens survive restarts.

    Args:
        key_dir: Where the private key lives (created mode 0700 if missing).
        issuer: The ``iss`` claim written and required.
        audience: The ``aud`` claim written and required.
        lifetime_s: Seconds a token is valid (``expires_in``).
        clock: Seconds since the epoch; injectable for tests.
    """

    def __init__(
        self,
        key_dir: Path,
        *,
        issuer: str = "phi-engine",
        audience: str = "phi-engine-api",
        lifetime_s: int = 3600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if lifetime_s <= 0:
            raise InvalidRequestError("lifetime_s must be positive", field="lifetime_s")
        self.algorithm = _ALG
        self.issuer = issuer
        self.audience = audience
        self.lifetime_s = lifetime_s
        self._clock = clock
        self._private = _load_or_create_key(Path(key_dir))
        self._public = self._private.public_key()
        x = _b64url(
            self._public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )
        # RFC 7638 §3: the thumbprint input is the required members, sorted, no whitespace.
        thumbprint_input = json.dumps(
            {"crv": "Ed25519", "kty": "OKP", "x": x}, sort_keys=True, separators=(",", ":")
        )
        self.kid = hashlib.sha256(thumbprint_input.encode()).hexdigest()[:16]
        self._jwk = {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": x,
            "kid": self.kid,
            "alg": _ALG,
            "use": "sig",
        }

    def issue(self, client: Client, scopes: Sequence[str] | None = None) -> dict[str, Any]:
        """An access token response for an authenticated client (RFC 6749 §4.4.3, §5.1).

        Args:
            client: The client, from :meth:`ClientStore.authenticate`.
            scopes: The scopes asked for; ``None`` or empty means all of the client's. A client
                holding ``admin`` may ask for any scope.

        Returns:
            ``{"access_token", "expires_in", "token_type": "Bearer", "scope"}``.

        Raises:
            InvalidRequestError: a scope that is unknown or not the client's (``field="scope"``,
                RFC 6749 §5.2 ``invalid_scope``).
            UnauthorizedError: the client is disabled.
        """
        if client.disabled:
            raise UnauthorizedError(f"client {client.client_id} is disabled")
        granted = self._grant(client, scopes)
        now = int(self._clock())
        claims = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": client.client_id,
            "client_id": client.client_id,  # RFC 9068 §2.2
            "iat": now,
            "nbf": now,
            "exp": now + self.lifetime_s,
            "jti": secrets.token_hex(16),
            "scope": " ".join(granted),
        }
        token = jwt.encode(
            claims, self._private, algorithm=_ALG, headers={"kid": self.kid, "typ": _TYP}
        )
        return {
            "access_token": token,
            "expires_in": self.lifetime_s,
            "token_type": "Bearer",
            "scope": claims["scope"],
        }

    @staticmethod
    def _grant(client: Client, scopes: Sequence[str] | None) -> tuple[str, ...]:
        """The scopes to grant, in :data:`SCOPES` order (RFC 6749 §3.3)."""
        if isinstance(scopes, str):
            raise InvalidRequestError("scopes must be a list of names", field="scope")
        for scope in scopes or ():
            if scope not in SCOPES:
                raise InvalidRequestError(f"unknown scope {scope!r}", field="scope")
            if scope not in client.scopes and "admin" not in client.scopes:
                raise InvalidRequestError(
                    f"client {client.client_id} may not request scope {scope!r}", field="scope"
                )
        wanted = set(scopes or client.scopes)
        return tuple(s for s in SCOPES if s in wanted)

    def verify(self, token: str) -> TokenClaims:
        """Verify a token from :meth:`issue`: signature, header, issuer, audience, times, claims.

        Args:
            token: The compact JWS.

        Returns:
            The claims.

        Raises:
            UnauthorizedError: the token is malformed, not EdDSA, signed by another key, altered,
                expired, not yet valid, for another issuer or audience, or lacks a claim.
        """
        if not isinstance(token, str) or len(token) > _MAX_TOKEN_CHARS:
            raise UnauthorizedError("the token is malformed")
        try:
            header = jwt.get_unverified_header(token)
            self._check_header(header)
            payload = jwt.decode(
                token,
                self._public,
                algorithms=[_ALG],  # RFC 8725 §3.1: never the algorithm the token names
                audience=self.audience,
                issuer=self.issuer,
                # Times are checked below against self._clock, not PyJWT's time.time().
                options={
                    "require": _REQUIRED,
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidSignatureError as exc:
            raise UnauthorizedError("the token signature is invalid") from exc
        except jwt.PyJWTError as exc:
            raise UnauthorizedError(f"the token is invalid: {exc}") from exc
        return self._claims(payload)

    def _check_header(self, header: dict[str, Any]) -> None:
        if header.get("alg") != _ALG:
            raise UnauthorizedError(f"only {_ALG} tokens are accepted")  # RFC 8725 §3.1
        if header.get("kid") != self.kid:
            raise UnauthorizedError("the token was signed by an unknown key")
        if header.get("typ") not in (_TYP, "application/" + _TYP):
            raise UnauthorizedError(f"the token is not an access token (typ {_TYP})")  # §3.11
        if "crit" in header:
            # RFC 7515 §4.1.11: we understand no extension (recent PyJWT refuses these too).
            raise UnauthorizedError("the token names critical header parameters")

    def _claims(self, payload: dict[str, Any]) -> TokenClaims:
        sub, jti, scope = payload["sub"], payload["jti"], payload["scope"]
        if not all(isinstance(v, str) and v for v in (sub, jti)) or not isinstance(scope, str):
            raise UnauthorizedError("the token's sub, jti and scope must be strings")
        scopes = tuple(scope.split())
        if any(s not in SCOPES for s in scopes):
            raise UnauthorizedError("the token names an unknown scope")
        iat, exp = _numeric_date(payload, "iat"), _numeric_date(payload, "exp")
        nbf = _numeric_date(payload, "nbf") if "nbf" in payload else iat
        now = self._clock()
        if now >= exp:
            raise UnauthorizedError("the token has expired")  # RFC 7519 §4.1.4
        if max(iat, nbf) > now + _LEEWAY_S:
            raise UnauthorizedError("the token is not valid yet")  # RFC 7519 §4.1.5
        return TokenClaims(sub=sub, scopes=scopes, jti=jti, iat=int(iat), exp=int(exp))

    def public_jwks(self) -> dict[str, Any]:
        """The public key as a JWK Set (RFC 7517 §5, OKP keys per RFC 8037)."""
        return {"keys": [dict(self._jwk)]}


def _numeric_date(payload: dict[str, Any], name: str) -> float:
    """A NumericDate claim (RFC 7519 §2): a finite JSON number (Python's json accepts NaN, and
    bool is an int)."""
    value = payload[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UnauthorizedError(f"the token's {name} must be a number")
    return float(value)


def require_scope(claims: TokenClaims, scope: str) -> None:
    """Check that a token carries ``scope``; ``admin`` carries every scope.

    Raises:
        ForbiddenError: the scope is missing (named in the message).
    """
    if scope not in claims.scopes and "admin" not in claims.scopes:
        raise ForbiddenError(
            f"this operation needs the scope {scope!r}; the token has "
            f"{' '.join(claims.scopes) or 'none'}",
            field="scope",
        )
