"""Security: OAuth 2.0 client credentials (RFC 6749 §4.4), JWT access tokens, scopes and rate
limits for the HTTP API (DESIGN.md, "security").

:class:`ClientStore` keeps clients and their scrypt-hashed secrets in the engine's SQLite file,
:class:`TokenIssuer` issues and verifies EdDSA-signed JWTs with a persisted key,
:func:`require_scope` gates an operation on a token's scopes, :class:`RateLimiter` is a token
bucket per key, and :func:`oauth_error` renders errors as RFC 6749 §5.2 bodies.
:func:`scan_path` judges an artifact by its bytes; ``Engine.validate`` runs the compliance checks
(:data:`CHECKS`) into a :class:`ComplianceReport`. The HTTP adapter
(``phi_engine.server``) only translates requests into these calls.
"""

from __future__ import annotations

from phi_engine.security._clients import SCOPES, Client, ClientStore, NewClient
from phi_engine.security._compliance import (
    CHECKS,
    STANDARDS,
    CheckResult,
    ComplianceReport,
    ServerSettings,
)
from phi_engine.security._oauth import oauth_error
from phi_engine.security._ratelimit import RateLimitedError, RateLimiter
from phi_engine.security._scan import (
    PICKLE_ALLOWLIST,
    RULES,
    Finding,
    ScanLimits,
    ScannedFile,
    ScanReport,
    scan_bytes,
    scan_path,
)
from phi_engine.security._tokens import TokenClaims, TokenIssuer, require_scope

__all__ = [
    "CHECKS",
    "PICKLE_ALLOWLIST",
    "RULES",
    "SCOPES",
    "STANDARDS",
    "CheckResult",
    "Client",
    "ClientStore",
    "ComplianceReport",
    "Finding",
    "NewClient",
    "RateLimitedError",
    "RateLimiter",
    "ScanLimits",
    "ScanReport",
    "ScannedFile",
    "ServerSettings",
    "TokenClaims",
    "TokenIssuer",
    "oauth_error",
    "require_scope",
    "scan_bytes",
    "scan_path",
]
