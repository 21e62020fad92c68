"""OAuth 2.0 client credentials over HTTP: the token endpoint and the scope check on every route.

``POST /v1/auth/token`` (RFC 6749 §4.4) takes the client's credentials as the product sheet's JSON
body, as the standard form body, or as HTTP Basic (§2.3.1), and answers errors with §5.2 bodies.
Every other route needs ``Authorization: Bearer <JWT>`` carrying the route's scope: 401 without a
valid token, 403 when the scope is missing. Verified tokens are cached until they expire, so the
signature is checked once per token rather than once per request.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs, unquote

from fastapi import Request
from fastapi.responses import JSONResponse

from phi_engine.errors import InvalidRequestError, PhiEngineError, UnauthorizedError
from phi_engine.security import (
    ClientStore,
    RateLimitedError,
    RateLimiter,
    TokenClaims,
    TokenIssuer,
    oauth_error,
    require_scope,
)
from phi_engine.server._errors import retry_after

__all__ = ["Auth"]

_CACHE_SIZE = 10_000
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}  # RFC 6749 §5.1


class Auth:
    """Credentials, tokens and scopes for one server.

    Args:
        clients: Where clients and their secret hashes live.
        tokens: Issues and verifies the JWTs.
        enabled: ``False`` serves every route without a token (``--no-auth``: loopback only).
        token_rate: Token requests per second allowed per client and per remote address.
    """

    def __init__(
        self,
        clients: ClientStore,
        tokens: TokenIssuer,
        *,
        enabled: bool = True,
        token_rate: float = 2.0,
        token_burst: int = 10,
    ) -> None:
        self.clients = clients
        self.tokens = tokens
        self.enabled = enabled
        self.token_rate = token_rate
        self._limiter = RateLimiter(token_rate, token_burst)
        self._cache: OrderedDict[str, TokenClaims] = OrderedDict()
        self._lock = threading.Lock()

    # ---- the scope check ----------------------------------------------------------------------

    def require(self, scope: str) -> Callable[[Request], Awaitable[TokenClaims | None]]:
        """A FastAPI dependency: the request's verified claims, which must carry ``scope``."""

        async def check(request: Request) -> TokenClaims | None:
            if not self.enabled:
                return None
            claims = self.verify_header(request.headers.get("authorization"))
            require_scope(claims, scope)
            return claims

        check.__name__ = f"requires_{scope.replace(':', '_')}"
        return check

    def verify_header(self, header: str | None) -> TokenClaims:
        """The claims of a ``Bearer`` token header. Raises ``UnauthorizedError``."""
        if not header:
            raise UnauthorizedError("this route needs a bearer token (POST /v1/auth/token)")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise UnauthorizedError("the Authorization header must be 'Bearer <token>'")
        return self._verify(token.strip())

    def _verify(self, token: str) -> TokenClaims:
        now = time.time()
        with self._lock:
            claims = self._cache.get(token)
            if claims is not None:
                self._cache.move_to_end(token)
        if claims is None or claims.exp <= now:
            claims = self._verify_new(token)
        if not self.clients.is_active(claims.sub):
            raise UnauthorizedError(f"client {claims.sub} is disabled")
        return claims

    def _verify_new(self, token: str) -> TokenClaims:
        claims = self.tokens.verify(token)  # raises UnauthorizedError
        with self._lock:
            self._cache[token] = claims
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return claims

    # ---- the token endpoint -------------------------------------------------------------------

    async def token_endpoint(self, request: Request) -> JSONResponse:
        """RFC 6749 §4.4 client credentials; errors as §5.2 bodies."""
        used_basic = False
        try:
            fields = await _credentials_body(request)
            basic = _basic_credentials(request.headers.get("authorization"))
            if basic is not None:
                used_basic = True
                if "client_id" in fields and fields["client_id"] != basic[0]:
                    raise InvalidRequestError("client_id differs from the Basic credentials")
                fields["client_id"], fields["client_secret"] = basic
            grant = fields.get("grant_type")
            if grant != "client_credentials":
                return _oauth(
                    400,
                    "unsupported_grant_type",
                    f"grant_type {grant!r} is not supported; use client_credentials",
                )
            client_id, secret = fields.get("client_id"), fields.get("client_secret")
            if not client_id or not secret:
                raise InvalidRequestError("client_id and client_secret are required")
            host = request.client.host if request.client else "unknown"
            self._limiter.check(f"addr:{host}")
            self._limiter.check(f"client:{client_id}")
            client = self.clients.authenticate(client_id, secret)
            scope = fields.get("scope")
            body = self.tokens.issue(client, scope.split() if scope else None)
        except RateLimitedError as exc:
            headers = {"Retry-After": retry_after(exc.retry_after_s), **_NO_STORE}
            return JSONResponse(oauth_error(exc), status_code=429, headers=headers)
        except UnauthorizedError as exc:
            # §5.2: invalid_client is 401, with a challenge when the client used Basic.
            headers = dict(_NO_STORE)
            if used_basic:
                headers["WWW-Authenticate"] = 'Basic realm="phi-engine"'
            return JSONResponse(oauth_error(exc), status_code=401, headers=headers)
        except PhiEngineError as exc:
            status = exc.status if exc.status >= 500 else 400  # §5.2: client errors are 400
            return JSONResponse(oauth_error(exc), status_code=status, headers=_NO_STORE)
        return JSONResponse(body, headers=_NO_STORE)


def _oauth(status: int, error: str, description: str) -> JSONResponse:
    return JSONResponse(
        {"error": error, "error_description": description}, status_code=status, headers=_NO_STORE
    )


async def _credentials_body(request: Request) -> dict[str, str]:
    """The sheet's JSON body, or the standard form body (RFC 6749 §4.4.2)."""
    raw = await request.body()
    if not raw:
        return {}
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/x-www-form-urlencoded":
        try:
            form = parse_qs(raw.decode("ascii"), strict_parsing=True)
        except (UnicodeDecodeError, ValueError) as exc:
            raise InvalidRequestError("the form body is malformed") from exc
        if any(len(v) != 1 for v in form.values()):
            raise InvalidRequestError("a parameter was sent more than once")  # §3.2
        return {k: v[0] for k, v in form.items()}
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InvalidRequestError("the body must be JSON or a form") from exc
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise InvalidRequestError("the JSON body must be an object of strings")
    return dict(data)


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    """Client id and secret from HTTP Basic (form-urlencoded first, RFC 6749 §2.3.1)."""
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise UnauthorizedError("the Basic credentials are malformed") from exc
    user, sep, password = decoded.partition(":")
    if not sep:
        raise UnauthorizedError("the Basic credentials are malformed")
    return unquote(user), unquote(password)
