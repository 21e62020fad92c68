"""The metadata store: one SQLite file (WAL, foreign keys, busy timeout) with schema migrations.

SQLite is the embedded default (DESIGN.md, "Where the state lives"). The schema is plain SQL that
also runs on PostgreSQL, so a shared registry can move there later. Migrations are an append-only
list: index ``i`` upgrades schema version ``i`` to ``i + 1``, and the version lives in SQLite's
``PRAGMA user_version`` (https://sqlite.org/pragma.html#pragma_user_version), which is part of the
database header and so changes atomically with the migration's own transaction.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from phi_engine.errors import UnsupportedError

__all__ = ["BUSY_TIMEOUT_S", "MIGRATIONS", "Database"]

BUSY_TIMEOUT_S = 30.0
"""How long a writer waits for another process's write transaction before giving up."""

MIGRATIONS: list[str] = [
    # 1: models and deployments. `artifact` is relative to the engine home so the home can move.
    """
    CREATE TABLE models (
      model_id TEXT PRIMARY KEY,
      name TEXT NOT NULL,
      version TEXT NOT NULL,
      framework TEXT NOT NULL,
      sha256 TEXT NOT NULL,
      size_bytes INTEGER NOT NULL,
      artifact TEXT NOT NULL,
      source_url TEXT NOT NULL,
      inputs TEXT NOT NULL,
      outputs TEXT NOT NULL,
      model_card TEXT,
      metadata TEXT,
      created_at REAL NOT NULL,
      UNIQUE (name, version)
    );
    CREATE TABLE deployments (
      deployment_id TEXT PRIMARY KEY,
      model_id TEXT NOT NULL REFERENCES models(model_id),
      candidate_model_id TEXT REFERENCES models(model_id),
      status TEXT NOT NULL,
      spec TEXT NOT NULL,
      created_at REAL NOT NULL,
      updated_at REAL NOT NULL
    );
    CREATE INDEX models_sha256 ON models (sha256);
    CREATE INDEX deployments_model_id ON deployments (model_id);
    CREATE INDEX deployments_candidate_model_id ON deployments (candidate_model_id);
    """,
    # 2: the kill switch: models taken out of service, by whom and why, until lifted.
    """
    CREATE TABLE model_blocks (
      model_id TEXT PRIMARY KEY REFERENCES models(model_id) ON DELETE CASCADE,
      reason TEXT NOT NULL,
      actor TEXT NOT NULL,
      blocked_at REAL NOT NULL
    );
    """,
    # 3: whether the registration pinned the SHA-256 (compliance evidence).
    """
    ALTER TABLE models ADD COLUMN sha256_pinned INTEGER NOT NULL DEFAULT 0;
    """,
    # 4: Ed25519 signatures: the pinned publisher keys, and each model's signature.
    """
    CREATE TABLE trusted_keys (
      name TEXT PRIMARY KEY,
      public_key TEXT NOT NULL,
      added_at REAL NOT NULL
    );
    ALTER TABLE models ADD COLUMN signature TEXT;
    ALTER TABLE models ADD COLUMN signer TEXT;
    ALTER TABLE models ADD COLUMN signed_sha256 TEXT;
    """,
    # 5: the per-file manifest of the model as distributed (JSON; NULL for rows registered
    # before, whose manifest is their one stored file).
    """
    ALTER TABLE models ADD COLUMN manifest TEXT;
    """,
]


def _statements(script: str) -> list[str]:
    """Split a migration script into statements.

    ``executescript`` would be simpler but commits any open transaction first, and a migration
    must run inside exactly one transaction together with its ``user_version`` bump.
    """
    statements: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    if pending.strip():
        statements.append(pending.strip())
    return statements


class Database:
    """SQLite under the engine home: WAL, foreign keys, busy timeout, schema migrations.

    One connection is shared by every thread of the process and guarded by one lock; SQLite's own
    locking (with the busy timeout) orders writers from other processes.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Open (creating the file and its parent directory) and run pending migrations.

        Args:
            path: The database file, e.g. ``home / "registry.db"``.

        Raises:
            UnsupportedError: the file was written by a newer phi_engine (a schema version this
                one does not know).
        """
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._depth = 0
        # isolation_level=None: the module never opens transactions behind our back; we issue
        # BEGIN IMMEDIATE ourselves so writers take the write lock up front (no upgrade deadlock).
        self._conn = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        try:
            self._conn.row_factory = sqlite3.Row
            self._conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            self._conn.execute("PRAGMA journal_mode = WAL")
            # FULL: a committed delete must survive power loss, since its artifact is gone.
            self._conn.execute("PRAGMA synchronous = FULL")
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except BaseException:
            self._conn.close()
            raise

    @property
    def schema_version(self) -> int:
        """The schema version recorded in the file (``PRAGMA user_version``)."""
        with self._lock:
            return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: ``BEGIN IMMEDIATE`` ... ``COMMIT``, ``ROLLBACK`` on any exception.

        Holds the database lock for its whole body, so other threads wait. A nested call from the
        same thread becomes a savepoint that rolls back on its own.

        Yields:
            The connection, to run statements on.
        """
        with self._lock:
            if self._depth:
                yield from self._savepoint()
                return
            self._conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                # Also when COMMIT itself fails; SQLite rolls back by itself after some errors
                # (e.g. SQLITE_FULL), hence the check.
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            finally:
                self._depth = 0

    def _savepoint(self) -> Iterator[sqlite3.Connection]:
        name = f"sp{self._depth}"
        self._conn.execute(f"SAVEPOINT {name}")
        self._depth += 1
        try:
            yield self._conn
            self._conn.execute(f"RELEASE {name}")
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute(f"ROLLBACK TO {name}")
                self._conn.execute(f"RELEASE {name}")
            raise
        finally:
            self._depth -= 1

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Run one statement and return all its rows.

        Outside :meth:`transaction` the statement commits on its own (autocommit); inside one,
        on the same thread, it is part of that transaction and sees its uncommitted writes.
        """
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _migrate(self) -> None:
        known = len(MIGRATIONS)
        while self.schema_version < known:
            with self.transaction() as conn:
                # Re-read under the write lock: another process may have migrated meanwhile.
                current = int(conn.execute("PRAGMA user_version").fetchone()[0])
                if current >= known:
                    break
                for statement in _statements(MIGRATIONS[current]):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {current + 1}")
        if self.schema_version > known:
            raise UnsupportedError(
                f"[registry] {str(self.path)!r} has schema version {self.schema_version}, newer "
                f"than this phi_engine knows ({known}); upgrade phi_engine"
            )
