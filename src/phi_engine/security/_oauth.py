"""Errors of the token endpoint as RFC 6749 §5.2 bodies."""

from __future__ import annotations

from phi_engine.errors import (
    ForbiddenError,
    InvalidRequestError,
    PhiEngineError,
    UnauthorizedError,
)
from phi_engine.security._ratelimit import RateLimitedError

__all__ = ["oauth_error"]

# RFC 6749 §5.2: error_description is %x20-21 / %x23-5B / %x5D-7E (printable ASCII but " and \).
_ALLOWED = frozenset(chr(c) for c in range(0x20, 0x7F)) - {'"', "\\"}


def _error_code(exc: PhiEngineError) -> str:
    if isinstance(exc, UnauthorizedError):
        return "invalid_client"
    if isinstance(exc, ForbiddenError):
        return "unauthorized_client"  # authenticated, but not allowed this grant
    if isinstance(exc, RateLimitedError):
        # Not defined for the token endpoint by RFC 6749; it is the registered value (§11.4)
        # for "cannot handle the request now", which is what a 429 means.
        return "temporarily_unavailable"
    if isinstance(exc, InvalidRequestError):
        if exc.field == "scope":
            return "invalid_scope"
        if exc.field == "grant_type":
            return "unsupported_grant_type"
        return "invalid_request"
    if exc.status >= 500:
        return "server_error"
    return "invalid_request"


def oauth_error(exc: PhiEngineError) -> dict[str, str]:
    """The RFC 6749 §5.2 error body for an error raised while issuing a token.

    ``UnauthorizedError`` is ``invalid_client``; ``InvalidRequestError`` is ``invalid_scope`` for
    ``field="scope"``, ``unsupported_grant_type`` for ``field="grant_type"`` and otherwise
    ``invalid_request``; ``ForbiddenError`` is ``unauthorized_client``; ``RateLimitedError`` is
    ``temporarily_unavailable``; any other 5xx error is ``server_error`` (its message withheld).

    Args:
        exc: The error.

    Returns:
        ``{"error", "error_description"}``.
    """
    code = _error_code(exc)
    message = "internal error" if code == "server_error" else exc.message
    description = "".join(c if c in _ALLOWED else "?" for c in message)
    return {"error": code, "error_description": description}
