"""OAuth 2.0 clients (RFC 6749 §2): ids, scopes and secrets stored only as scrypt hashes.

The clients live in the engine's SQLite file, in a table this module creates itself
(``CREATE TABLE IF NOT EXISTS`` in one :meth:`Database.transaction`, when the store is opened)
rather than through the registry's ``MIGRATIONS`` list; the registry may fold the same statement
into a migration later, and since both use ``IF NOT EXISTS`` either order works.

A secret is ``secrets.token_urlsafe(32)`` (256 bits), shown once in :class:`NewClient` and stored as
a PHC-style string ``$scrypt$ln=14,r=8,p=1$<salt>$<hash>`` (RFC 7914) that records its own
parameters, so they can be raised later without breaking stored clients.
"""

from __future__ import annotations

import base64
import builtins
import functools
import hashlib
import hmac
import secrets
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass

from phi_engine.errors import InvalidRequestError, NotFoundError, UnauthorizedError
from phi_engine.registry import Database

__all__ = ["SCOPES", "Client", "ClientStore", "NewClient", "hash_secret", "verify_secret"]

SCOPES: tuple[str, ...] = (
    "models:read",
    "models:write",
    "deploy",
    "infer",
    "logs:read",
    "security",
    "admin",
)
"""Every scope a client may hold; ``admin`` implies all the others."""

_TABLE = """
CREATE TABLE IF NOT EXISTS auth_clients (
  client_id TEXT PRIMARY KEY,
  secret_hash TEXT NOT NULL,
  scopes TEXT NOT NULL,
  name TEXT,
  created_at REAL NOT NULL,
  disabled INTEGER NOT NULL DEFAULT 0
)
"""

# RFC 7914 §2 parameters: N = 2**14, r = 8 costs 16 MiB and tens of milliseconds per hash.
_LOG2_N, _R, _P = 14, 8, 1
_SALT_BYTES, _HASH_BYTES = 16, 32
_MAX_SECRET_CHARS = 1024  # longer input is refused before hashing: no CPU-burning secrets
_MAX_NAME_CHARS = 200
_INVALID = "invalid client credentials"  # one message for unknown id and wrong secret


@dataclass(frozen=True)
class Client:
    """A registered client, never with its secret."""

    client_id: str
    scopes: tuple[str, ...]
    created_at: float
    disabled: bool
    name: str | None


@dataclass(frozen=True)
class NewClient:
    """A client just created: the only place its secret ever exists in clear."""

    client_id: str
    client_secret: str
    scopes: tuple[str, ...]

    def __repr__(self) -> str:
        # Keep the secret out of logs and tracebacks that print the object.
        return f"NewClient(client_id={self.client_id!r}, client_secret='***', scopes={self.scopes})"


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _scrypt(secret: str, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    n = 1 << log2_n
    return hashlib.scrypt(
        # surrogatepass: a lone surrogate from a JSON body must not turn into a 500.
        secret.encode("utf-8", "surrogatepass"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        maxmem=256 * n * r * p,  # the working set is about 128·N·r·p bytes
        dklen=_HASH_BYTES,
    )


def hash_secret(secret: str) -> str:
    """Hash a client secret with scrypt and a fresh 16-byte salt.

    Args:
        secret: The secret in clear.

    Returns:
        ``$scrypt$ln=14,r=8,p=1$<salt>$<hash>``, salt and hash in unpadded base64.
    """
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = _scrypt(secret, salt, _LOG2_N, _R, _P)
    return f"$scrypt$ln={_LOG2_N},r={_R},p={_P}${_b64(salt)}${_b64(digest)}"


def verify_secret(secret: str, stored: str) -> bool:
    """Whether ``secret`` matches a hash from :func:`hash_secret`, compared in constant time.

    A malformed hash, or one whose parameters are out of a sane range (a tampered row must not
    make us allocate gigabytes), never matches.
    """
    try:
        _, kind, params, salt, digest = stored.split("$")
        fields = dict(item.split("=", 1) for item in params.split(","))
        log2_n, r, p = int(fields["ln"]), int(fields["r"]), int(fields["p"])
        salt_raw, digest_raw = _unb64(salt), _unb64(digest)
    except (ValueError, KeyError):
        return False
    if kind != "scrypt" or not (10 <= log2_n <= 20 and 1 <= r <= 32 and 1 <= p <= 16):
        return False
    return hmac.compare_digest(_scrypt(secret, salt_raw, log2_n, r, p), digest_raw)


@functools.cache
def _dummy_hash() -> str:
    """A hash no one knows the secret of: checked against for unknown ids so that they cost
    one scrypt too, and timing does not tell an unknown id from a wrong secret."""
    return hash_secret(secrets.token_urlsafe(32))


def _check_scopes(scopes: Sequence[str]) -> tuple[str, ...]:
    """Known, deduplicated scopes in :data:`SCOPES` order; at least one."""
    if isinstance(scopes, str):
        raise InvalidRequestError("scopes must be a list of names, not one string", field="scopes")
    wanted = set(scopes)
    unknown = sorted(s for s in wanted if s not in SCOPES)
    if unknown:
        raise InvalidRequestError(
            f"unknown scope(s) {' '.join(unknown)}; known: {' '.join(SCOPES)}", field="scopes"
        )
    if not wanted:
        raise InvalidRequestError("a client needs at least one scope", field="scopes")
    return tuple(s for s in SCOPES if s in wanted)


class ClientStore:
    """The OAuth 2.0 clients allowed to call the HTTP API, in the engine's SQLite file.

    Args:
        db: The engine's database; the ``auth_clients`` table is created in it if missing.
    """

    #: How long a client's enabled state is trusted before it is read again: a client disabled
    #: elsewhere (another process on the same home) loses its tokens within this many seconds;
    #: one disabled through this store loses them at once.
    ACTIVE_TTL_S = 1.0

    def __init__(self, db: Database) -> None:
        self._db = db
        self._active: dict[str, tuple[bool, float]] = {}
        with db.transaction() as conn:
            conn.execute(_TABLE)

    def is_active(self, client_id: str) -> bool:
        """Whether the client exists and is not disabled (its tokens are honoured)."""
        now = time.monotonic()
        known = self._active.get(client_id)
        if known is not None and now - known[1] < self.ACTIVE_TTL_S:
            return known[0]
        rows = self._db.query("SELECT disabled FROM auth_clients WHERE client_id = ?", (client_id,))
        active = bool(rows) and not rows[0]["disabled"]
        if len(self._active) > 100_000:
            self._active.clear()
        self._active[client_id] = (active, now)
        return active

    def create(self, scopes: Sequence[str], name: str | None = None) -> NewClient:
        """Create a client with a fresh id and secret.

        Args:
            scopes: The scopes the client may ask for, from :data:`SCOPES`.
            name: An optional label (at most 200 characters).

        Returns:
            The id, the secret (shown only here) and the normalized scopes.

        Raises:
            InvalidRequestError: an unknown or empty scope list (``field="scopes"``) or a bad name
                (``field="name"``).
        """
        granted = _check_scopes(scopes)
        if name is not None and (not isinstance(name, str) or len(name) > _MAX_NAME_CHARS):
            raise InvalidRequestError(
                f"name must be a string of at most {_MAX_NAME_CHARS} characters", field="name"
            )
        client_id = "cl_" + secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        with self._db.transaction() as conn:
            conn.execute(
                "INSERT INTO auth_clients (client_id, secret_hash, scopes, name, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (client_id, hash_secret(secret), " ".join(granted), name, time.time()),
            )
        return NewClient(client_id=client_id, client_secret=secret, scopes=granted)

    def authenticate(self, client_id: str, client_secret: str) -> Client:
        """Check a client's credentials (RFC 6749 §2.3.1).

        Args:
            client_id: The id from :meth:`create`.
            client_secret: The secret from :meth:`create`.

        Returns:
            The client.

        Raises:
            UnauthorizedError: the same message for an unknown id and a wrong secret (both cost
                one scrypt); a disabled client is named as such only once its secret matched.
        """
        if len(client_secret) > _MAX_SECRET_CHARS:
            raise UnauthorizedError(_INVALID)
        rows = self._db.query("SELECT * FROM auth_clients WHERE client_id = ?", (client_id,))
        stored = rows[0]["secret_hash"] if rows else _dummy_hash()
        if not verify_secret(client_secret, stored) or not rows:
            raise UnauthorizedError(_INVALID)
        client = _client(rows[0])
        if client.disabled:
            raise UnauthorizedError(f"client {client_id} is disabled")
        return client

    def get(self, client_id: str) -> Client:
        """The client with this id.

        Raises:
            NotFoundError: no such client.
        """
        rows = self._db.query("SELECT * FROM auth_clients WHERE client_id = ?", (client_id,))
        if not rows:
            raise NotFoundError(f"no client {client_id!r}", field="client_id")
        return _client(rows[0])

    def disable(self, client_id: str) -> None:
        """Refuse the client's credentials, and the tokens already issued to it, from now on
        (idempotent; a server on another process sharing the home stops honouring its tokens
        within :attr:`ACTIVE_TTL_S`).

        Raises:
            NotFoundError: no such client.
        """
        with self._db.transaction() as conn:
            cur = conn.execute(
                "UPDATE auth_clients SET disabled = 1 WHERE client_id = ?", (client_id,)
            )
            if cur.rowcount == 0:
                raise NotFoundError(f"no client {client_id!r}", field="client_id")
        self._active[client_id] = (False, time.monotonic())

    def list(self) -> builtins.list[Client]:
        """Every client, oldest first (never with secrets)."""
        rows = self._db.query("SELECT * FROM auth_clients ORDER BY created_at, client_id")
        return [_client(row) for row in rows]


def _client(row: sqlite3.Row) -> Client:
    return Client(
        client_id=row["client_id"],
        scopes=tuple(row["scopes"].split()),
        created_at=row["created_at"],
        disabled=bool(row["disabled"]),
        name=row["name"],
    )
