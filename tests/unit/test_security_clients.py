"""OAuth 2.0 clients: creation, authentication, hashed secrets, scopes, disabling, §5.2 errors."""

from __future__ import annotations

import base64
import hashlib
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from phi_engine.errors import (
    ForbiddenError,
    InvalidRequestError,
    NotFoundError,
    PhiEngineError,
    UnauthorizedError,
)
from phi_engine.registry import MIGRATIONS, Database
from phi_engine.security import (
    SCOPES,
    ClientStore,
    NewClient,
    RateLimitedError,
    oauth_error,
)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "home" / "registry.db"


@pytest.fixture
def db(db_path: Path) -> Iterator[Database]:
    with Database(db_path) as opened:
        yield opened


@pytest.fixture
def store(db: Database) -> ClientStore:
    return ClientStore(db)


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


# ---- create and authenticate ------------------------------------------------------------------


def test_create_then_authenticate_round_trip(store: ClientStore) -> None:
    new = store.create(["infer", "models:read"], name="ci")
    assert re.fullmatch(r"cl_[0-9a-f]{16}", new.client_id)
    assert len(new.client_secret) >= 43  # token_urlsafe(32): 256 bits
    assert new.scopes == ("models:read", "infer")  # normalized to SCOPES order

    client = store.authenticate(new.client_id, new.client_secret)
    assert client.client_id == new.client_id
    assert client.scopes == ("models:read", "infer")
    assert client.name == "ci"
    assert client.disabled is False
    assert abs(client.created_at - time.time()) < 60
    assert store.get(new.client_id) == client


def test_ids_and_secrets_are_fresh_each_time(store: ClientStore) -> None:
    made = [store.create(["infer"]) for _ in range(3)]
    assert len({m.client_id for m in made}) == 3
    assert len({m.client_secret for m in made}) == 3


def test_wrong_secret_and_unknown_id_answer_the_same(store: ClientStore) -> None:
    new = store.create(["infer"])
    with pytest.raises(UnauthorizedError) as wrong:
        store.authenticate(new.client_id, new.client_secret + "x")
    with pytest.raises(UnauthorizedError) as unknown:
        store.authenticate("cl_0000000000000000", new.client_secret)
    assert wrong.value.message == unknown.value.message
    assert wrong.value.status == unknown.value.status == 401
    assert new.client_id not in wrong.value.message


def test_unknown_id_costs_a_hash_like_a_wrong_secret(store: ClientStore) -> None:
    """Timing must not tell an unknown id from a wrong secret: both run one scrypt."""
    new = store.create(["infer"])
    store.authenticate(new.client_id, new.client_secret)  # warm the dummy hash path

    def fastest(client_id: str) -> float:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            with pytest.raises(UnauthorizedError):
                store.authenticate(client_id, "wrong")
            times.append(time.perf_counter() - start)
        return min(times)

    unknown, wrong = fastest("cl_ffffffffffffffff"), fastest(new.client_id)
    # A DB miss alone takes microseconds; scrypt takes milliseconds. Loose bound: no flakiness.
    assert unknown > 0.3 * wrong


def test_overlong_or_odd_secrets_are_refused_cleanly(store: ClientStore) -> None:
    new = store.create(["infer"])
    for secret in ("", "x" * 100_000, "\ud800", new.client_secret[:-1]):
        with pytest.raises(UnauthorizedError):
            store.authenticate(new.client_id, secret)


def test_new_client_repr_hides_the_secret(store: ClientStore) -> None:
    new = store.create(["infer"])
    assert new.client_secret not in repr(new)
    assert isinstance(new, NewClient)


# ---- secrets at rest --------------------------------------------------------------------------


def test_secrets_are_never_stored_in_clear(store: ClientStore, db: Database, db_path: Path) -> None:
    new = store.create(["infer"])
    other = store.create(["infer"])
    with sqlite3.connect(db_path) as raw:
        rows = raw.execute("SELECT * FROM auth_clients").fetchall()
        columns = [c[1] for c in raw.execute("PRAGMA table_info(auth_clients)")]
    assert len(rows) == 2
    for row in rows:
        for value in row:
            assert new.client_secret not in str(value)
            assert other.client_secret not in str(value)
    # Nor anywhere in the database files (main file and write-ahead log).
    for path in db_path.parent.iterdir():
        assert new.client_secret.encode() not in path.read_bytes()

    hashes = [dict(zip(columns, row, strict=True))["secret_hash"] for row in rows]
    assert hashes[0] != hashes[1]
    for stored in hashes:
        # The hash records its own parameters: $scrypt$ln=14,r=8,p=1$<salt>$<hash>.
        _, kind, params, salt, _digest = stored.split("$")
        assert (kind, params) == ("scrypt", "ln=14,r=8,p=1")
        assert len(_unb64(salt)) == 16


def test_stored_hash_is_scrypt_of_the_secret(store: ClientStore, db: Database) -> None:
    """Recompute the documented hash independently of the implementation."""
    new = store.create(["infer"])
    (row,) = db.query("SELECT secret_hash FROM auth_clients WHERE client_id = ?", (new.client_id,))
    _, _, _, salt, digest = row["secret_hash"].split("$")
    expected = hashlib.scrypt(
        new.client_secret.encode(), salt=_unb64(salt), n=2**14, r=8, p=1, dklen=len(_unb64(digest))
    )
    assert expected == _unb64(digest)


@pytest.mark.parametrize(
    "stored",
    ["garbage", "$scrypt$ln=30,r=8,p=1$AAAA$AAAA", "$bcrypt$ln=14,r=8,p=1$AAAA$AAAA", "$scrypt$$$"],
)
def test_a_malformed_or_hostile_stored_hash_never_matches(
    store: ClientStore, db: Database, stored: str
) -> None:
    new = store.create(["infer"])
    with db.transaction() as conn:
        conn.execute("UPDATE auth_clients SET secret_hash = ?", (stored,))
    with pytest.raises(UnauthorizedError):
        store.authenticate(new.client_id, new.client_secret)


# ---- scopes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("scopes", [["infer", "root"], [], "infer", ["INFER"]])
def test_scopes_are_validated(store: ClientStore, scopes: list[str]) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        store.create(scopes)
    assert caught.value.field == "scopes"
    assert store.list() == []


def test_every_known_scope_is_accepted_and_deduplicated(store: ClientStore) -> None:
    new = store.create([*reversed(SCOPES), "infer"])
    assert new.scopes == SCOPES


def test_a_bad_name_is_refused(store: ClientStore) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        store.create(["infer"], name="n" * 1000)
    assert caught.value.field == "name"


# ---- get, list, disable -----------------------------------------------------------------------


def test_disabled_client_is_refused(store: ClientStore) -> None:
    new = store.create(["infer"])
    store.disable(new.client_id)
    store.disable(new.client_id)  # idempotent
    with pytest.raises(UnauthorizedError, match="disabled"):
        store.authenticate(new.client_id, new.client_secret)
    # Only someone who knows the secret learns that the client is disabled.
    with pytest.raises(UnauthorizedError) as caught:
        store.authenticate(new.client_id, "wrong")
    assert "disabled" not in caught.value.message
    assert store.get(new.client_id).disabled is True


def test_unknown_clients_are_not_found(store: ClientStore) -> None:
    with pytest.raises(NotFoundError):
        store.get("cl_0000000000000000")
    with pytest.raises(NotFoundError):
        store.disable("cl_0000000000000000")


def test_list_shows_every_client_without_secrets(store: ClientStore) -> None:
    made = [store.create(["infer"], name=f"c{i}") for i in range(3)]
    listed = store.list()
    assert [c.client_id for c in listed] == [m.client_id for m in made]
    assert [c.name for c in listed] == ["c0", "c1", "c2"]
    assert not any(hasattr(c, "client_secret") for c in listed)


def test_clients_survive_reopening_and_leave_the_schema_version_alone(db_path: Path) -> None:
    with Database(db_path) as db:
        new = ClientStore(db).create(["deploy"])
    with Database(db_path) as db:
        assert db.schema_version == len(MIGRATIONS)
        again = ClientStore(db)  # CREATE TABLE IF NOT EXISTS: a no-op the second time
        assert again.authenticate(new.client_id, new.client_secret).scopes == ("deploy",)


# ---- RFC 6749 §5.2 error bodies ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "error"),
    [
        (UnauthorizedError("invalid client credentials"), "invalid_client"),
        (InvalidRequestError("unknown scope 'x'", field="scope"), "invalid_scope"),
        (
            InvalidRequestError("grant_type is missing", field="grant_type"),
            "unsupported_grant_type",
        ),
        (InvalidRequestError("client_id is required"), "invalid_request"),
        (ForbiddenError("not for you"), "unauthorized_client"),
        (RateLimitedError("slow down", retry_after_s=1.5), "temporarily_unavailable"),
        (PhiEngineError("boom at /secret/path"), "server_error"),
    ],
)
def test_oauth_error_bodies(exc: PhiEngineError, error: str) -> None:
    body = oauth_error(exc)
    assert body["error"] == error
    assert set(body) == {"error", "error_description"}
    if error == "server_error":
        assert "secret" not in body["error_description"]  # internals are not described


def test_oauth_error_description_uses_only_allowed_characters() -> None:
    body = oauth_error(InvalidRequestError('bad "scope" \\ é\n', field="scope"))
    # RFC 6749 §5.2: %x20-21 / %x23-5B / %x5D-7E.
    assert all(0x20 <= ord(c) <= 0x7E and c not in '"\\' for c in body["error_description"])
    assert body["error_description"].startswith("bad ")
