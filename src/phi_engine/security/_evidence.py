"""What the compliance checks look at: :class:`Evidence` gathered by ``Engine.validate`` and the
:class:`ServerSettings` of the HTTP server in front of the engine.

Kept apart from the check table (:mod:`._checks`) and the report (:mod:`._compliance`) so both
can import it; both re-export it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Evidence", "ServerSettings"]


@dataclass(frozen=True)
class ServerSettings:
    """What the HTTP server in front of the engine does (``None`` fields: not known).

    Attributes:
        auth: Whether routes need bearer tokens (``False``: ``--no-auth``).
        host: The address it is bound to.
        tls: Whether it serves HTTPS.
        max_body_bytes: The request body limit.
        token_rate: Token requests per second allowed per client and address (0: unlimited).
        unscoped_routes: Routes that need a token but no scope (should be none).
        open_routes: Routes served without a token by design (health, discovery, the token
            endpoint).
    """

    auth: bool
    host: str | None = None
    tls: bool = False
    max_body_bytes: int | None = None
    token_rate: float = 0.0
    unscoped_routes: tuple[str, ...] = ()
    open_routes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Evidence:
    """What the checks look at, gathered by the engine (see ``Engine.validate``)."""

    model_id: str
    framework: str
    artifact_kind: str
    scan: Any  # ScanReport of the stored artifact
    sha256_pinned: bool
    sha256_matches: bool
    model_card: Mapping[str, Any] | None
    metadata: Mapping[str, Any] | None
    deployment_id: str | None = None
    limits: Any = None  # InputLimits of the deployment
    log_events: int = 0
    chain_ok: bool | None = None
    chain_reason: str | None = None
    recent_log_fields: tuple[Mapping[str, Any], ...] = ()
    retention_days: float | None = None
    signature: str | None = None  # "verified" when a signature was checked at register
    runtime_rehash_s: float | None = None
    jwt_algorithm: str = ""
    jwt_lifetime_s: int = 0
    jwt_issuer: str = ""
    jwt_audience: str = ""
    secret_schemes: tuple[str, ...] = ()
    kill_switch: bool = False
    blocked: bool = False
    server: ServerSettings | None = None
    versions: Mapping[str, str | None] = field(default_factory=dict)
