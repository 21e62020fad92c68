"""The persisted event log: append-only, hash-chained audit records in their own SQLite file.

Each deployment has its own chain, and engine-wide events (``deployment_id=None``) share one more:
an event's hash is ``sha256(prev_hash || canonical JSON of {seq, deployment_id, timestamp, level,
event, fields})``, so :meth:`EventLog.verify` finds any edit of a stored row (DESIGN.md, "Where
the state lives"). Triggers abort every UPDATE and DELETE; one transaction per append means a
crash loses at most the record being written; field values are checked so that no payload or
secret is ever logged (API.md 2.1, 2.2).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from phi_engine.errors import InvalidRequestError, PhiEngineError

__all__ = ["LEVELS", "ChainReport", "Event", "EventLog", "PruneReport"]

#: Levels from least to most severe; a ``level`` filter is a minimum.
LEVELS = ("debug", "info", "warning", "error")

#: The ``prev_hash`` of the first event of every chain.
GENESIS = "0" * 64

_EVENT_NAME = re.compile(r"[a-z0-9_.-]{1,64}")
_FIELD_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_SECRET_WORDS = (
    "secret",
    "password",
    "passwd",
    "token",
    "authorization",
    "api_key",
    "apikey",
    "credential",
    "private_key",
)
# A value that looks like a bearer credential or a JWT is refused even under an innocent key.
_SECRET_VALUE = re.compile(r"^\s*bearer\s|eyJ[\w-]{4,}\.eyJ[\w-]{4,}\.", re.IGNORECASE)
_RESERVED = frozenset({"seq", "timestamp", "event", "level", "deployment_id", "hash", "prev_hash"})
_MAX_STR = 512
_MAX_LIST = 32
_MAX_FIELDS = 64
_MAX_DEPLOYMENT_ID = 128
_PAGE = 500
_SCHEMA_VERSION = 2

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS events (
        seq INTEGER PRIMARY KEY,
        deployment_id TEXT,
        timestamp REAL NOT NULL,
        level TEXT NOT NULL,
        event TEXT NOT NULL,
        fields TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS events_by_deployment ON events (deployment_id, seq)",
    "CREATE INDEX IF NOT EXISTS events_by_time ON events (timestamp)",
    # Even a bug in phi_engine cannot rewrite history: the file refuses it.
    """CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
    BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END""",
    # Retention (schema 2): the only deletion is EventLog.prune, which raises the guard inside
    # its own transaction; checkpoints keep each chain's last pruned hash, so what remains still
    # verifies, and only prune may write them.
    """CREATE TABLE IF NOT EXISTS prune_guard (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        active INTEGER NOT NULL
    )""",
    "INSERT OR IGNORE INTO prune_guard (id, active) VALUES (1, 0)",
    """CREATE TABLE IF NOT EXISTS checkpoints (
        chain TEXT PRIMARY KEY,
        tip_hash TEXT NOT NULL,
        pruned INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS prune_state (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        through_seq INTEGER NOT NULL,
        pruned INTEGER NOT NULL,
        before REAL NOT NULL,
        pruned_at REAL NOT NULL
    )""",
    """CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events
    WHEN (SELECT active FROM prune_guard WHERE id = 1) IS NOT 1
    BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END""",
    *(
        f"""CREATE TRIGGER IF NOT EXISTS {table}_guarded_{op.lower()} BEFORE {op} ON {table}
        WHEN (SELECT active FROM prune_guard WHERE id = 1) IS NOT 1
        BEGIN SELECT RAISE(ABORT, 'only retention may write {table}'); END"""
        for table in ("checkpoints", "prune_state")
        for op in ("INSERT", "UPDATE", "DELETE")
    ),
)
_ENGINE_CHAIN = ""  # the checkpoints key of the engine-wide chain (deployment_id None)
_COLUMNS = "seq, deployment_id, timestamp, level, event, fields, prev_hash, hash"

Scalar = str | int | float | bool | None
Since = float | datetime | str | None


@dataclass(frozen=True)
class Event:
    """One stored event.

    Attributes:
        seq: Global sequence number, increasing across all chains.
        deployment_id: The deployment it concerns; ``None`` for engine-wide events.
        timestamp: Unix seconds.
        level: One of :data:`LEVELS`.
        event: What happened, e.g. ``deployed``, ``scaled``, ``request_failed``, ``shed``.
        fields: JSON scalars and short lists of scalars.
        prev_hash: Hex SHA-256 of the previous event of the same chain (:data:`GENESIS` first).
        hash: Hex SHA-256 of this event, chained to ``prev_hash``.
    """

    seq: int
    deployment_id: str | None
    timestamp: float
    level: str
    event: str
    fields: dict[str, Any]
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape ``GET /logs`` returns (API.md 2.1), with an ISO-8601 UTC timestamp."""
        when = datetime.fromtimestamp(self.timestamp, UTC).isoformat(timespec="microseconds")
        return {
            "seq": self.seq,
            "timestamp": when.replace("+00:00", "Z"),
            "event": self.event,
            "level": self.level,
            "deployment_id": self.deployment_id,
            **self.fields,
            "hash": self.hash,
        }


@dataclass(frozen=True)
class ChainReport:
    """What :meth:`EventLog.verify` found.

    Attributes:
        ok: Every checked event links to its predecessor and matches its hash.
        checked: How many events were checked.
        first_bad_seq: The ``seq`` of the first event that fails, if any.
        reason: Why it fails, if it does.
    """

    ok: bool
    checked: int
    first_bad_seq: int | None
    reason: str | None


@dataclass(frozen=True)
class PruneReport:
    """What :meth:`EventLog.prune` removed.

    Attributes:
        pruned: Events removed now.
        through_seq: Every event up to this ``seq`` is gone (now or before); 0 when none is.
        before: The cutoff asked for (unix seconds).
    """

    pruned: int
    through_seq: int
    before: float


@dataclass(frozen=True)
class _Filter:
    deployment_id: str | None
    since: float | None
    levels: tuple[str, ...] | None
    event: str | None


def chain_hash(
    prev_hash: str,
    seq: int,
    deployment_id: str | None,
    timestamp: float,
    level: str,
    event: str,
    fields: dict[str, Any],
) -> str:
    """The hash of an event: SHA-256 of ``prev_hash`` then its canonical JSON.

    Canonical means sorted keys and no whitespace, so the same event always hashes the same.
    """
    record = {
        "seq": seq,
        "deployment_id": deployment_id,
        "timestamp": timestamp,
        "level": level,
        "event": event,
        "fields": fields,
    }
    return hashlib.sha256(prev_hash.encode() + _canonical(record).encode()).hexdigest()


def _canonical(value: Any) -> str:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


# --- validation -----------------------------------------------------------------------------


def _check_level(level: object) -> str:
    if not isinstance(level, str) or level not in LEVELS:
        raise InvalidRequestError(
            f"unknown level {level!r}; use one of {', '.join(LEVELS)}", field="level"
        )
    return level


def _check_event(event: object) -> str:
    if not isinstance(event, str) or not _EVENT_NAME.fullmatch(event):
        raise InvalidRequestError(
            f"event {event!r} must be 1-64 characters of a-z, 0-9, '_', '.', '-'", field="event"
        )
    return event


def _check_deployment_id(deployment_id: object) -> str | None:
    if deployment_id is None:
        return None
    if (
        not isinstance(deployment_id, str)
        or not 0 < len(deployment_id) <= _MAX_DEPLOYMENT_ID
        or not deployment_id.isprintable()
        or any(c.isspace() for c in deployment_id)
    ):
        raise InvalidRequestError(
            f"deployment_id must be None or 1-{_MAX_DEPLOYMENT_ID} printable characters",
            field="deployment_id",
        )
    return deployment_id


def _check_fields(fields: dict[str, Any]) -> dict[str, Any]:
    if len(fields) > _MAX_FIELDS:
        raise InvalidRequestError(f"at most {_MAX_FIELDS} fields per event", field="fields")
    clean: dict[str, Any] = {}
    for key, value in fields.items():
        _check_key(key)
        if isinstance(value, list | tuple):
            if len(value) > _MAX_LIST:
                raise InvalidRequestError(
                    f"list field {key!r} has {len(value)} items; at most {_MAX_LIST}", field=key
                )
            clean[key] = [_scalar(key, item) for item in value]
        else:
            clean[key] = _scalar(key, value)
    return clean


def _check_key(key: str) -> None:
    if not _FIELD_NAME.fullmatch(key):
        raise InvalidRequestError(
            f"field name {key!r} must be 1-64 characters of A-Z, a-z, 0-9, '_', '.', '-'",
            field=key,
        )
    if key in _RESERVED:
        raise InvalidRequestError(f"field name {key!r} is reserved", field=key)
    lowered = key.lower()
    if any(word in lowered for word in _SECRET_WORDS):
        # API.md 2.1: secrets are never logged, whatever the caller meant to put there.
        raise InvalidRequestError(f"field {key!r} looks like a secret; not logged", field=key)


def _scalar(key: str, value: object) -> Scalar:
    """``value`` as a plain JSON scalar, or an InvalidRequestError naming ``key``."""
    if isinstance(value, np.ndarray):
        raise InvalidRequestError(f"field {key!r} is an array; payloads are not logged", field=key)
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidRequestError(f"field {key!r} is not a finite number", field=key)
        return float(value)
    if isinstance(value, str):
        if len(value) > _MAX_STR:
            raise InvalidRequestError(
                f"field {key!r} is {len(value)} characters; at most {_MAX_STR}", field=key
            )
        if _SECRET_VALUE.search(value):
            raise InvalidRequestError(f"field {key!r} looks like a credential", field=key)
        return str.__str__(value)
    raise InvalidRequestError(
        f"field {key!r} is a {type(value).__name__}; only JSON scalars and short lists are logged",
        field=key,
    )


def _check_since(since: Since) -> float | None:
    if since is None:
        return None
    if isinstance(since, datetime):
        if since.tzinfo is None or since.utcoffset() is None:
            raise InvalidRequestError("since must be a timezone-aware datetime", field="since")
        return since.timestamp()
    if isinstance(since, str):
        return _parse_since(since)
    if isinstance(since, int | float) and not isinstance(since, bool) and math.isfinite(since):
        return float(since)
    raise InvalidRequestError(
        "since must be unix seconds, an aware datetime or an ISO-8601 string", field="since"
    )


def _parse_since(text: str) -> float:
    """Unix seconds from a number or an ISO-8601 string; no offset means UTC (a REST query)."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            raise InvalidRequestError(
                f"since {text!r} is neither unix seconds nor ISO-8601", field="since"
            ) from None
        return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    if not math.isfinite(seconds):
        raise InvalidRequestError("since must be finite", field="since")
    return seconds


_SQLITE_MAX_INT = (1 << 63) - 1


def _check_limit(limit: object) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        raise InvalidRequestError("limit must be a positive integer", field="limit")
    return min(limit, _SQLITE_MAX_INT)  # more than SQLite can bind means every event


def _check_seconds(value: object, name: str, *, allow_zero: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequestError(f"{name} must be a number of seconds", field=name)
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        raise InvalidRequestError(f"{name} must be a finite positive number", field=name)
    return seconds


def _make_filter(
    deployment_id: str | None, since: Since, level: str | None, event: str | None
) -> _Filter:
    levels = None if level is None else LEVELS[LEVELS.index(_check_level(level)) :]
    return _Filter(
        deployment_id=_check_deployment_id(deployment_id),
        since=_check_since(since),
        levels=levels,
        event=None if event is None else _check_event(event),
    )


def _where(flt: _Filter, after_seq: int | None = None) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if flt.deployment_id is not None:
        clauses.append("deployment_id = ?")
        params.append(flt.deployment_id)
    if flt.since is not None:
        clauses.append("timestamp >= ?")
        params.append(flt.since)
    if flt.levels is not None:
        clauses.append(f"level IN ({', '.join('?' * len(flt.levels))})")
        params.extend(flt.levels)
    if flt.event is not None:
        clauses.append("event = ?")
        params.append(flt.event)
    if after_seq is not None:
        clauses.append("seq > ?")
        params.append(after_seq)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def _to_event(row: tuple[Any, ...]) -> Event:
    seq, deployment_id, timestamp, level, event, fields, prev_hash, hash_ = row
    return Event(seq, deployment_id, timestamp, level, event, json.loads(fields), prev_hash, hash_)


@contextmanager
def _sqlite_errors(what: str) -> Iterator[None]:
    # A full disk, a lock held past busy_timeout or a corrupt file is an engine failure, not a
    # bad request; callers catch PhiEngineError, not sqlite3's classes.
    try:
        yield
    except sqlite3.Error as exc:
        raise PhiEngineError(f"event log {what} failed: {exc}") from exc


# --- the log --------------------------------------------------------------------------------


class EventLog:
    """An append-only, hash-chained event log in its own SQLite file.

    Safe to share between threads; several processes may open the same file. Use it as a context
    manager, or call :meth:`close`.

    Args:
        path: The SQLite file (e.g. ``home/events.db``); its parent folders are created.

    Raises:
        PhiEngineError: the file cannot be opened or is not an event log.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # guards the connection
        self._cond = threading.Condition()  # wakes followers on an in-process append or close
        self._generation = 0
        self._closed = False
        with _sqlite_errors("open"):
            # Autocommit mode: transactions are ours (BEGIN IMMEDIATE), never implicit.
            self._conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
            try:
                self._init_schema()
            except BaseException:
                self._conn.close()
                raise

    def _init_schema(self) -> None:
        conn = self._conn
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed append survives a power cut too, not only a process crash.
        conn.execute("PRAGMA synchronous=FULL")
        with self._transaction():
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > _SCHEMA_VERSION:
                raise PhiEngineError(
                    f"{self.path} has event log schema {version}; this phi_engine reads "
                    f"{_SCHEMA_VERSION}"
                )
            if version < 2:  # schema 1's trigger refused every delete, retention's too
                conn.execute("DROP TRIGGER IF EXISTS events_no_delete")
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # BEGIN IMMEDIATE takes the write lock up front, so the chain tip read inside cannot be
        # changed by another thread or process before our insert commits.
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _open_conn(self) -> sqlite3.Connection:
        if self._closed:
            raise PhiEngineError("the event log is closed")
        return self._conn

    def append(
        self, event: str, *, deployment_id: str | None = None, level: str = "info", **fields: Any
    ) -> Event:
        """Append one event to its deployment's chain (or the engine-wide chain).

        Args:
            event: What happened: 1-64 characters of ``a-z0-9_.-`` (``deployed``, ``shed``...).
            deployment_id: The deployment concerned; ``None`` for engine-wide events.
            level: One of :data:`LEVELS`.
            **fields: JSON scalars (strings up to 512 characters, finite numbers, bools, None)
                or lists of at most 32 scalars. numpy scalars are converted.

        Returns:
            The stored event, with its ``seq`` and hashes.

        Raises:
            InvalidRequestError: a bad event name, level or deployment_id, or a field that is a
                payload (array, bytes, dict, long string) or looks like a secret; ``field``
                names it. Nothing is written.
            PhiEngineError: the log is closed or the write failed.
        """
        event = _check_event(event)
        level = _check_level(level)
        deployment_id = _check_deployment_id(deployment_id)
        clean = _check_fields(fields)
        fields_json = _canonical(clean)
        with self._lock, _sqlite_errors("append"):
            self._open_conn()
            with self._transaction() as conn:
                seq = (
                    max(
                        conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0],
                        _pruned_through(conn),
                    )
                    + 1
                )
                tip = conn.execute(
                    "SELECT hash FROM events WHERE deployment_id IS ? ORDER BY seq DESC LIMIT 1",
                    (deployment_id,),
                ).fetchone()
                prev_hash = tip[0] if tip else _checkpoint(conn, deployment_id)
                timestamp = time.time()
                digest = chain_hash(prev_hash, seq, deployment_id, timestamp, level, event, clean)
                conn.execute(
                    f"INSERT INTO events ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (seq, deployment_id, timestamp, level, event, fields_json, prev_hash, digest),
                )
        with self._cond:
            self._generation += 1
            self._cond.notify_all()
        return Event(seq, deployment_id, timestamp, level, event, clean, prev_hash, digest)

    def query(
        self,
        deployment_id: str | None = None,
        *,
        since: Since = None,
        level: str | None = None,
        limit: int | None = None,
        event: str | None = None,
    ) -> list[Event]:
        """The stored events that match every filter given, oldest first.

        Args:
            deployment_id: One deployment's events; ``None`` for all events.
            since: Events at or after this: unix seconds, an aware datetime, or an ISO-8601
                string (no offset means UTC) or a string of unix seconds.
            level: The minimum level (``warning`` gives warnings and errors).
            limit: Only the most recent ``limit`` matching events (still returned oldest first).
            event: Only events of this name.

        Returns:
            The matching events in ``seq`` order.

        Raises:
            InvalidRequestError: a bad filter; ``field`` names it (``level``, ``limit``, ``since``).
            PhiEngineError: the log is closed or the read failed.
        """
        flt = _make_filter(deployment_id, since, level, event)
        limit = _check_limit(limit)
        where, params = _where(flt)
        if limit is None:
            rows = self._fetch(f"SELECT {_COLUMNS} FROM events{where} ORDER BY seq", params)
            return [_to_event(row) for row in rows or []]
        sql = f"SELECT {_COLUMNS} FROM events{where} ORDER BY seq DESC LIMIT ?"
        rows = self._fetch(sql, [*params, limit])
        return [_to_event(row) for row in reversed(rows or [])]

    def _fetch(self, sql: str, params: list[Any], *, closed_ok: bool = False) -> list[Any] | None:
        """The rows of ``sql``; ``None`` when the log is closed and ``closed_ok``."""
        with self._lock, _sqlite_errors("read"):
            if self._closed and closed_ok:
                return None
            return self._open_conn().execute(sql, params).fetchall()

    def follow(
        self,
        deployment_id: str | None = None,
        *,
        since: Since = None,
        level: str | None = None,
        stop: threading.Event | None = None,
        poll_s: float = 0.25,
        timeout_s: float | None = None,
    ) -> Iterator[Event]:
        """The matching stored events, then new ones as they are appended.

        Appends through this object wake followers at once; appends by other processes (or other
        :class:`EventLog` objects on the same file) are seen within ``poll_s``.

        Args:
            deployment_id: One deployment's events; ``None`` for all events.
            since: As in :meth:`query`.
            level: The minimum level.
            stop: Ends the iteration once set (checked at least every ``poll_s``).
            poll_s: How often to look for events appended elsewhere.
            timeout_s: End after this many seconds without a new event; ``None`` waits forever.

        Returns:
            An iterator of events in ``seq`` order; it ends on ``stop``, ``timeout_s`` or
            :meth:`close`.

        Raises:
            InvalidRequestError: a bad filter, ``poll_s`` or ``timeout_s``; raised by this call,
                not on the first ``next()``.
        """
        flt = _make_filter(deployment_id, since, level, None)
        poll = _check_seconds(poll_s, "poll_s", allow_zero=False)
        timeout = (
            None if timeout_s is None else _check_seconds(timeout_s, "timeout_s", allow_zero=True)
        )
        self._open_conn()
        return self._follow(flt, stop, poll, timeout)

    def _follow(
        self, flt: _Filter, stop: threading.Event | None, poll_s: float, timeout_s: float | None
    ) -> Iterator[Event]:
        after = 0
        idle_since = time.monotonic()
        while stop is None or not stop.is_set():
            with self._cond:
                generation = self._generation
            where, params = _where(flt, after_seq=after)
            sql = f"SELECT {_COLUMNS} FROM events{where} ORDER BY seq LIMIT {_PAGE}"
            rows = self._fetch(sql, params, closed_ok=True)
            if rows is None:
                return
            for row in rows:
                found = _to_event(row)
                after = found.seq
                yield found
            if rows:
                idle_since = time.monotonic()
                continue
            wait = poll_s
            if timeout_s is not None:
                wait = min(wait, timeout_s - (time.monotonic() - idle_since))
                if wait <= 0:
                    return
            with self._cond:
                # Only sleep if nothing was appended since the read above: no lost wake-up.
                if self._generation == generation and not self._closed:
                    self._cond.wait(wait)

    def verify(self, deployment_id: str | None = None) -> ChainReport:
        """Recompute every chain (or one deployment's) and report the first break.

        Checks that each event's ``prev_hash`` is its chain's previous hash, that its hash matches
        its stored content, and (over the whole log) that ``seq`` has no gap. Removing the newest
        events of a chain leaves no trace inside the chain; the ``seq`` gap check catches it
        unless they were the newest of the whole log.

        Args:
            deployment_id: One deployment's chain; ``None`` for every chain.

        Returns:
            A :class:`ChainReport`.

        Raises:
            InvalidRequestError: a bad ``deployment_id``.
            PhiEngineError: the log is closed or the read failed.
        """
        whole_log = deployment_id is None
        flt = _make_filter(deployment_id, None, None, None)
        with self._lock, _sqlite_errors("read"):
            conn = self._open_conn()
            tips: dict[str | None, str] = {
                (None if chain == _ENGINE_CHAIN else chain): tip
                for chain, tip in conn.execute("SELECT chain, tip_hash FROM checkpoints")
            }
            after = _pruned_through(conn)
        checked = 0
        while True:
            where, params = _where(flt, after_seq=after)
            sql = f"SELECT {_COLUMNS} FROM events{where} ORDER BY seq LIMIT {_PAGE}"
            rows = self._fetch(sql, params) or []
            for row in rows:
                reason = _check_row(row, tips, after if whole_log else None)
                if reason is not None:
                    return ChainReport(False, checked, row[0], reason)
                checked += 1
                after = row[0]
            if len(rows) < _PAGE:
                return ChainReport(True, checked, None, None)

    def prune(self, before: float) -> PruneReport:
        """Remove the oldest events, those logged before ``before`` (the retention period).

        What goes is a prefix of the log: every event up to the first one logged at or after
        ``before`` (so a clock that stepped back never removes a newer event). The removed
        events are verified first, and refused if they do not verify: evidence of tampering is
        never pruned away. Each chain's last removed hash is kept as its checkpoint, so the
        events that remain still verify, and ``seq`` keeps counting from where it was.

        Raises:
            InvalidRequestError: ``before`` is not a finite number (``field="before"``).
            PhiEngineError: the events to remove do not verify, the log is closed, or the
                write failed.
        """
        if isinstance(before, bool) or not isinstance(before, int | float):
            raise InvalidRequestError("before must be unix seconds", field="before")
        if not math.isfinite(before):
            raise InvalidRequestError("before must be a finite number", field="before")
        with self._lock, _sqlite_errors("prune"):
            self._open_conn()
            with self._transaction() as conn:
                done = _pruned_through(conn)
                first_kept = conn.execute(
                    "SELECT MIN(seq) FROM events WHERE timestamp >= ?", (before,)
                ).fetchone()[0]
                if first_kept is None:
                    first_kept = conn.execute("SELECT MAX(seq) FROM events").fetchone()[0]
                    first_kept = (first_kept or done) + 1
                through = first_kept - 1
                if through <= done:
                    return PruneReport(0, done, float(before))
                tips = {
                    (None if chain == _ENGINE_CHAIN else chain): tip
                    for chain, tip in conn.execute("SELECT chain, tip_hash FROM checkpoints")
                }
                pruned: dict[str | None, int] = {}
                prev = done
                rows = conn.execute(
                    f"SELECT {_COLUMNS} FROM events WHERE seq <= ? ORDER BY seq", (through,)
                )
                for row in rows:
                    reason = _check_row(row, tips, prev)
                    if reason is not None:
                        raise PhiEngineError(
                            f"the events to prune do not verify (seq {row[0]}: {reason}); "
                            "nothing was pruned"
                        )
                    prev = row[0]
                    pruned[row[1]] = pruned.get(row[1], 0) + 1
                conn.execute("UPDATE prune_guard SET active = 1 WHERE id = 1")
                for chain, count in pruned.items():
                    key = _ENGINE_CHAIN if chain is None else chain
                    conn.execute(
                        "INSERT INTO checkpoints (chain, tip_hash, pruned) VALUES (?, ?, ?) "
                        "ON CONFLICT (chain) DO UPDATE SET tip_hash = excluded.tip_hash, "
                        "pruned = pruned + excluded.pruned",
                        (key, tips[chain], count),
                    )
                removed = conn.execute("DELETE FROM events WHERE seq <= ?", (through,)).rowcount
                conn.execute(
                    "INSERT INTO prune_state (id, through_seq, pruned, before, pruned_at) "
                    "VALUES (1, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                    "through_seq = excluded.through_seq, pruned = pruned + excluded.pruned, "
                    "before = excluded.before, pruned_at = excluded.pruned_at",
                    (through, removed, float(before), time.time()),
                )
                conn.execute("UPDATE prune_guard SET active = 0 WHERE id = 1")
        return PruneReport(removed, through, float(before))

    def close(self) -> None:
        """Close the file and end every follower. Calling it again does nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._conn.close()
        with self._cond:
            self._cond.notify_all()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _pruned_through(conn: sqlite3.Connection) -> int:
    """The ``seq`` through which retention removed every event (0: none removed)."""
    row = conn.execute("SELECT through_seq FROM prune_state WHERE id = 1").fetchone()
    return int(row[0]) if row else 0


def _checkpoint(conn: sqlite3.Connection, deployment_id: str | None) -> str:
    """A chain's hash before its first remaining event: its last pruned one, or GENESIS."""
    key = _ENGINE_CHAIN if deployment_id is None else deployment_id
    row = conn.execute("SELECT tip_hash FROM checkpoints WHERE chain = ?", (key,)).fetchone()
    return str(row[0]) if row else GENESIS


def _check_row(
    row: tuple[Any, ...], tips: dict[str | None, str], prev_seq: int | None
) -> str | None:
    """Why ``row`` breaks its chain, or ``None``; advances ``tips`` when it does not."""
    seq, deployment_id, timestamp, level, event, fields, prev_hash, stored = row
    if prev_seq is not None and seq != prev_seq + 1:
        return f"seq {prev_seq + 1} to {seq - 1} missing"
    expected_prev = tips.get(deployment_id, GENESIS)
    if prev_hash != expected_prev:
        return "prev_hash does not match the previous event of its chain"
    try:
        content = json.loads(fields)
        digest = chain_hash(prev_hash, seq, deployment_id, float(timestamp), level, event, content)
    except (TypeError, ValueError):
        return "stored row is malformed (fields not JSON, or timestamp not a number)"
    if digest != stored:
        return "hash does not match the stored event"
    tips[deployment_id] = stored
    return None
