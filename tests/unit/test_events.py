"""The event log: append/query, hash chains, tamper detection, refusals, follow, concurrency."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from phi_engine import observability
from phi_engine.errors import InvalidRequestError, PhiEngineError
from phi_engine.observability import LEVELS, Event, EventLog

GENESIS = "0" * 64


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "home" / "events.db"


@pytest.fixture
def log(path: Path) -> Iterator[EventLog]:
    with EventLog(path) as opened:
        yield opened


def _expected_hash(prev_hash: str, e: Event) -> str:
    """The documented formula: sha256(prev_hash || canonical JSON), sorted keys, no whitespace."""
    record = {
        "seq": e.seq,
        "deployment_id": e.deployment_id,
        "timestamp": e.timestamp,
        "level": e.level,
        "event": e.event,
        "fields": e.fields,
    }
    body = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


def _raw(path: Path, sql: str, params: tuple[Any, ...] = ()) -> None:
    conn = sqlite3.connect(path)
    try:
        with conn:
            conn.execute(sql, params)
    finally:
        conn.close()


# --- append and query -------------------------------------------------------------------------


def test_exports() -> None:
    assert {"Event", "EventLog", "ChainReport", "LEVELS"} <= set(observability.__all__)
    assert LEVELS == ("debug", "info", "warning", "error")


def test_append_round_trip(log: EventLog, path: Path) -> None:
    before = time.time()
    e = log.append("deployed", deployment_id="d1", replicas=2, device="cpu", ratio=0.5, ok=True)
    assert path.exists()  # parent folders were created
    assert (e.seq, e.deployment_id, e.level, e.event) == (1, "d1", "info", "deployed")
    assert before <= e.timestamp <= time.time()
    assert e.fields == {"replicas": 2, "device": "cpu", "ratio": 0.5, "ok": True}
    assert e.prev_hash == GENESIS
    assert e.hash == _expected_hash(GENESIS, e)
    assert log.query() == [e]
    body = e.to_dict()
    assert list(body) == [
        "seq",
        "timestamp",
        "event",
        "level",
        "deployment_id",
        "replicas",
        "device",
        "ratio",
        "ok",
        "hash",
    ]
    assert datetime.fromisoformat(body["timestamp"]).timestamp() == pytest.approx(e.timestamp)
    assert body["timestamp"].endswith("Z")
    json.dumps(body)


def test_file_is_wal(log: EventLog, path: Path) -> None:
    log.append("started")
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_numpy_scalars_are_converted(log: EventLog) -> None:
    e = log.append(
        "profiled", p99=np.float32(1.5), rows=np.int64(3), warm=np.bool_(True), sizes=[np.int32(8)]
    )
    stored = log.query()[0].fields
    assert stored == e.fields == {"p99": 1.5, "rows": 3, "warm": True, "sizes": [8]}
    assert [type(stored[k]) for k in ("p99", "rows", "warm")] == [float, int, bool]


def test_query_by_deployment_event_level_and_limit(log: EventLog) -> None:
    log.append("registered", model="m")
    log.append("deployed", deployment_id="d1")
    log.append("shed", deployment_id="d1", level="warning", count=3)
    log.append("deployed", deployment_id="d2")
    log.append("request_failed", deployment_id="d1", level="error", reason="worker")
    log.append("scaled", deployment_id="d1", level="debug", replicas=2)

    assert [e.seq for e in log.query()] == [1, 2, 3, 4, 5, 6]
    assert [e.seq for e in log.query("d1")] == [2, 3, 5, 6]
    assert [e.seq for e in log.query(event="deployed")] == [2, 4]
    assert [e.seq for e in log.query("d1", event="deployed")] == [2]
    assert [e.seq for e in log.query(level="warning")] == [3, 5]
    assert [e.seq for e in log.query(level="error")] == [5]
    assert [e.seq for e in log.query(level="info")] == [1, 2, 3, 4, 5]
    assert [e.seq for e in log.query(level="debug")] == [1, 2, 3, 4, 5, 6]
    # limit keeps the most recent, still oldest first.
    assert [e.seq for e in log.query(limit=2)] == [5, 6]
    assert [e.seq for e in log.query("d1", limit=3)] == [3, 5, 6]
    assert [e.seq for e in log.query(limit=100)] == [1, 2, 3, 4, 5, 6]
    assert log.query("nobody") == []


def test_query_since_in_each_form(log: EventLog) -> None:
    first = log.append("a")
    time.sleep(0.01)
    second = log.append("b")
    time.sleep(0.01)
    log.append("c")
    mid = (first.timestamp + second.timestamp) / 2
    when = datetime.fromtimestamp(mid, UTC)
    forms: list[float | datetime | str] = [
        mid,
        when,
        when.isoformat(),
        when.isoformat().replace("+00:00", "Z"),
        when.replace(tzinfo=None).isoformat(),  # a string with no offset is UTC
        str(mid),
    ]
    for since in forms:
        assert [e.event for e in log.query(since=since)] == ["b", "c"], since
    # "at or after": an event's own timestamp includes it.
    assert [e.event for e in log.query(since=second.timestamp)] == ["b", "c"]
    assert log.query(since=time.time() + 60) == []


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"level": "fatal"}, "level"),
        ({"level": "WARNING"}, "level"),
        ({"limit": 0}, "limit"),
        ({"limit": -1}, "limit"),
        ({"limit": 1.5}, "limit"),
        ({"limit": True}, "limit"),
        ({"since": "yesterday"}, "since"),
        ({"since": "nan"}, "since"),
        ({"since": float("inf")}, "since"),
        ({"since": True}, "since"),
        ({"since": datetime(2024, 1, 1)}, "since"),  # naive: ambiguous
        ({"event": "Not An Event"}, "event"),
        ({"deployment_id": ""}, "deployment_id"),
        ({"deployment_id": "a b"}, "deployment_id"),
    ],
)
def test_query_filters_are_validated(log: EventLog, kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        log.query(**kwargs)
    assert info.value.field == field


# --- chains and verification ------------------------------------------------------------------


def test_chains_per_deployment_link_and_verify(log: EventLog) -> None:
    chains = ["d1", "d2", None, "d1", None, "d2", "d1"]
    events = [log.append("tick", deployment_id=d, i=i) for i, d in enumerate(chains)]
    tips: dict[str | None, str] = {}
    for e in events:
        assert e.prev_hash == tips.get(e.deployment_id, GENESIS)
        assert e.hash == _expected_hash(e.prev_hash, e)
        tips[e.deployment_id] = e.hash
    assert log.query() == events
    report = log.verify()
    assert (report.ok, report.checked, report.first_bad_seq, report.reason) == (True, 7, None, None)
    assert log.verify("d1").checked == 3
    assert log.verify("d2").checked == 2
    assert log.verify("nobody").ok


def test_empty_log_verifies(log: EventLog) -> None:
    assert log.verify().ok
    assert log.verify().checked == 0


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("fields", '{"rows":999}'),
        ("level", "debug"),
        ("event", "scaled"),
        ("timestamp", 0.0),
        ("timestamp", "not a number"),
        ("deployment_id", "d2"),
        ("hash", "f" * 64),
    ],
)
def test_verify_finds_an_edited_row(path: Path, column: str, value: object) -> None:
    with EventLog(path) as log:
        for i in range(4):
            log.append("served", deployment_id="d1", rows=i)
        log.append("served", deployment_id="d2", rows=0)
    _raw(path, "DROP TRIGGER events_no_update")
    _raw(path, f"UPDATE events SET {column} = ? WHERE seq = 3", (value,))
    with EventLog(path) as log:
        report = log.verify()
        assert not report.ok
        assert report.first_bad_seq == 3
        assert report.checked == 2
        assert report.reason
        # Moving seq 3 to d2 leaves a hole in d1's chain at seq 4 instead.
        assert log.verify("d1").first_bad_seq == (4 if column == "deployment_id" else 3)


def test_verify_finds_a_deleted_row(path: Path) -> None:
    with EventLog(path) as log:
        for i in range(4):
            log.append("served", deployment_id="d1" if i != 2 else "d2", rows=i)
    _raw(path, "DROP TRIGGER events_no_delete")
    _raw(path, "DELETE FROM events WHERE seq = 2")
    with EventLog(path) as log:
        report = log.verify()
        assert (report.ok, report.first_bad_seq) == (False, 3)  # the seq gap
        assert log.verify("d1").first_bad_seq == 4  # the broken link


def test_update_and_delete_are_refused_by_the_file(log: EventLog, path: Path) -> None:
    log.append("deployed", deployment_id="d1")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        _raw(path, "UPDATE events SET level = 'error'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        _raw(path, "DELETE FROM events")
    assert len(log.query()) == 1
    assert log.verify().ok
    assert not any(hasattr(log, name) for name in ("update", "delete", "remove", "truncate"))


# --- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "api_key",
        "APIKEY",
        "client_secret",
        "Password",
        "passwd",
        "access_token",
        "Authorization",
        "private_key_pem",
        "aws_credentials",
    ],
)
def test_secret_names_are_refused(log: EventLog, key: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        log.append("authenticated", **{key: "x"})
    assert info.value.field == key
    assert key in info.value.message
    assert log.query() == []


@pytest.mark.parametrize(
    "value",
    [
        np.zeros(3),
        np.array(1.0),
        b"raw bytes",
        {"nested": 1},
        "x" * 513,
        [1] * 33,
        [[1, 2]],
        [np.zeros(2)],
        float("nan"),
        float("inf"),
        object(),
        {1, 2},
        "Bearer abc.def",
        "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJjbGllbnQifQ.c2ln",
    ],
    ids=lambda v: type(v).__name__,
)
def test_payloads_are_refused(log: EventLog, value: object) -> None:
    with pytest.raises(InvalidRequestError) as info:
        log.append("request_failed", deployment_id="d1", note="ok", data=value)
    assert info.value.field == "data"
    assert log.query() == []


def test_limits_that_are_allowed(log: EventLog) -> None:
    e = log.append("ok", text="x" * 512, ids=list(range(32)), nothing=None, empty=[])
    assert log.query()[0].fields == e.fields


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"event": ""}, "event"),
        ({"event": "Deployed"}, "event"),
        ({"event": "x" * 65}, "event"),
        ({"event": "deployed", "level": "fatal"}, "level"),
        ({"event": "deployed", "deployment_id": ""}, "deployment_id"),
        ({"event": "deployed", "deployment_id": 7}, "deployment_id"),
        ({"event": "deployed", "deployment_id": "x" * 129}, "deployment_id"),
        ({"event": "deployed", "hash": "0"}, "hash"),
        ({"event": "deployed", "seq": 1}, "seq"),
        ({"event": "deployed", "bad key": 1}, "bad key"),
    ],
)
def test_append_arguments_are_validated(log: EventLog, kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        log.append(**kwargs)
    assert info.value.field == field
    assert log.query() == []


# --- follow -----------------------------------------------------------------------------------


def _append_later(log: EventLog, delay: float, names: list[str]) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        for name in names:
            log.append(name, deployment_id="d1")

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_follow_yields_existing_then_new_and_stops(log: EventLog) -> None:
    log.append("deployed", deployment_id="d1")
    log.append("deployed", deployment_id="d2")
    stop = threading.Event()
    # poll_s is long: the new events can only arrive this fast through the in-process wake-up.
    thread = _append_later(log, 0.1, ["scaled", "updated"])
    seen: list[str] = []
    start = time.monotonic()
    for e in log.follow("d1", stop=stop, poll_s=30.0, timeout_s=10.0):
        seen.append(e.event)
        if len(seen) == 3:
            stop.set()
    thread.join()
    assert seen == ["deployed", "scaled", "updated"]
    assert time.monotonic() - start < 5.0


def test_follow_filters_level_and_since(log: EventLog) -> None:
    old = log.append("deployed", deployment_id="d1")
    time.sleep(0.01)
    log.append("shed", deployment_id="d1", level="warning")
    thread = _append_later(log, 0.05, ["scaled"])  # info: filtered out
    since = old.timestamp + 0.005
    got = list(log.follow(since=since, level="warning", poll_s=0.05, timeout_s=0.5))
    thread.join()
    assert [e.event for e in got] == ["shed"]


def test_follow_ends_after_timeout_without_events(log: EventLog) -> None:
    log.append("deployed")
    start = time.monotonic()
    got = list(log.follow(poll_s=0.05, timeout_s=0.2))
    elapsed = time.monotonic() - start
    assert [e.event for e in got] == ["deployed"]
    assert 0.15 <= elapsed < 3.0


def test_follow_ends_when_stop_is_set(log: EventLog) -> None:
    stop = threading.Event()
    timer = threading.Timer(0.1, stop.set)
    timer.start()
    start = time.monotonic()
    assert list(log.follow(stop=stop, poll_s=0.05)) == []
    timer.join()
    assert time.monotonic() - start < 3.0


def test_close_wakes_and_ends_followers(path: Path) -> None:
    log = EventLog(path)
    log.append("deployed")
    seen: list[Event] = []
    follower = threading.Thread(target=lambda: seen.extend(log.follow(poll_s=60.0)))
    follower.start()
    time.sleep(0.1)
    start = time.monotonic()
    log.close()
    follower.join(timeout=5.0)
    assert not follower.is_alive()
    assert time.monotonic() - start < 2.0  # woken, not polled
    assert [e.event for e in seen] == ["deployed"]
    log.close()  # again: nothing happens
    with pytest.raises(PhiEngineError, match="closed"):
        log.query()
    with pytest.raises(PhiEngineError, match="closed"):
        log.append("deployed")


def test_follow_validates_eagerly(log: EventLog) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"poll_s": 0}, "poll_s"),
        ({"timeout_s": -1}, "timeout_s"),
        ({"level": "loud"}, "level"),
        ({"since": "soon"}, "since"),
    ]
    for kwargs, field in cases:
        with pytest.raises(InvalidRequestError) as info:
            log.follow(**kwargs)
        assert info.value.field == field


def test_follow_sees_appends_from_another_process(log: EventLog, path: Path) -> None:
    log.append("deployed", deployment_id="d1")
    code = (
        "import sys, time\n"
        "from phi_engine.observability import EventLog\n"
        "time.sleep(0.2)\n"
        "with EventLog(sys.argv[1]) as log:\n"
        "    log.append('scaled', deployment_id='d1', replicas=2)\n"
        "    log.append('updated', deployment_id='d1', level='warning')\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)])
    got: list[Event] = []
    try:
        for e in log.follow("d1", poll_s=0.05, timeout_s=20.0):
            got.append(e)
            if len(got) == 3:
                break
    finally:
        assert proc.wait(timeout=30) == 0
    assert [e.event for e in got] == ["deployed", "scaled", "updated"]
    assert got[1].fields == {"replicas": 2}
    assert got[1].prev_hash == got[0].hash
    assert log.verify().ok


# --- concurrency and reopening ----------------------------------------------------------------


def test_concurrent_appends_are_gap_free_and_chained(path: Path) -> None:
    # Two objects on one file (as two processes would be), two threads each.
    with EventLog(path) as first, EventLog(path) as second:
        errors: list[BaseException] = []

        def work(log: EventLog, worker: int) -> None:
            try:
                for i in range(25):
                    log.append("tick", deployment_id=[None, "d1", "d2"][i % 3], w=worker, i=i)
            except BaseException as exc:
                errors.append(exc)

        threads = [
            threading.Thread(target=work, args=(log, n))
            for n, log in enumerate([first, first, second, second])
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        events = first.query()
        assert [e.seq for e in events] == list(range(1, 101))
        assert sorted((e.fields["w"], e.fields["i"]) for e in events) == [
            (w, i) for w in range(4) for i in range(25)
        ]
        assert first.verify() == second.verify()
        assert first.verify().ok and first.verify().checked == 100


def test_reopen_continues_the_chains(path: Path) -> None:
    with EventLog(path) as log:
        log.append("deployed", deployment_id="d1")
        tip = log.append("scaled", deployment_id="d1", replicas=2)
        engine_tip = log.append("registered", model="m")
    with EventLog(path) as log:
        assert log.verify().ok
        assert len(log.query()) == 3
        e = log.append("updated", deployment_id="d1")
        assert (e.seq, e.prev_hash) == (4, tip.hash)
        assert log.append("registered", model="n").prev_hash == engine_tip.hash
        assert log.verify() == observability.ChainReport(True, 5, None, None)


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "events.db"
    bad.write_bytes(b"not a sqlite file at all" * 100)
    with pytest.raises(PhiEngineError, match="event log open failed"):
        EventLog(bad)


# --- retention ----------------------------------------------------------------------------------


class _Clock:
    """A settable time.time for the event log module."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    fake = _Clock(1_000_000.0)
    monkeypatch.setattr("phi_engine.observability._events.time.time", fake)
    return fake


def test_prune_removes_a_prefix_and_what_remains_verifies(path: Path, clock: _Clock) -> None:
    with EventLog(path) as log:
        for i in range(6):
            clock.now = 1_000_000.0 + i
            log.append("served", deployment_id=("d1", "d2", None)[i % 3], rows=i)
        report = log.prune(1_000_003.0)
        assert (report.pruned, report.through_seq) == (3, 3)
        assert [e.seq for e in log.query()] == [4, 5, 6]
        assert log.verify().ok and log.verify().checked == 3
        assert all(log.verify(d).ok for d in ("d1", "d2"))
        assert log.prune(1_000_003.0).pruned == 0  # nothing more is that old
        # Appends go on from the checkpoints: seq keeps counting, chains keep linking.
        clock.now += 10
        tip = log.query("d1")[-1]
        added = log.append("served", deployment_id="d1", rows=9)
        assert added.seq == 7 and added.prev_hash == tip.hash
    with EventLog(path) as log:
        assert log.verify().ok and log.verify().checked == 4


def test_pruning_everything_keeps_the_chains_going(path: Path, clock: _Clock) -> None:
    with EventLog(path) as log:
        last = [log.append("deployed", deployment_id=d) for d in ("d1", "d2", "d1")]
        assert log.prune(clock.now + 1).pruned == 3 and log.query() == []
        assert log.verify().ok
        nxt = log.append("scaled", deployment_id="d1")
        assert (nxt.seq, nxt.prev_hash) == (4, last[2].hash)
        fresh = log.append("deployed", deployment_id="d3")
        assert fresh.prev_hash == GENESIS
        assert log.verify().ok


def test_a_clock_that_stepped_back_never_prunes_newer_events(path: Path, clock: _Clock) -> None:
    with EventLog(path) as log:
        for when in (100.0, 300.0, 200.0, 400.0):  # the third was logged after a step back
            clock.now = when
            log.append("served", deployment_id="d1")
        report = log.prune(250.0)
        assert report.pruned == 1, "the event at 200 s came after the one at 300 s"
        assert [e.timestamp for e in log.query()] == [300.0, 200.0, 400.0]
        assert log.verify().ok


def test_prune_refuses_to_remove_tampered_events(path: Path, clock: _Clock) -> None:
    with EventLog(path) as log:
        for i in range(4):
            clock.now = 1_000_000.0 + i
            log.append("served", deployment_id="d1", rows=i)
    _raw(path, "DROP TRIGGER events_no_update")
    _raw(path, "UPDATE events SET fields = ? WHERE seq = 2", ('{"rows":99}',))
    with EventLog(path) as log:
        with pytest.raises(PhiEngineError, match="do not verify"):
            log.prune(1_000_003.0)
        assert len(log.query()) == 4, "the evidence is kept"


def test_only_prune_may_delete_or_write_checkpoints(log: EventLog, path: Path) -> None:
    log.append("deployed", deployment_id="d1")
    log.prune(time.time() + 1)
    log.append("deployed", deployment_id="d1")
    for sql in (
        "DELETE FROM events",
        "UPDATE checkpoints SET tip_hash = 'x'",
        "DELETE FROM checkpoints",
        "INSERT INTO checkpoints VALUES ('d9', 'x', 1)",
        "UPDATE prune_state SET through_seq = 0",
    ):
        with pytest.raises(sqlite3.DatabaseError, match=r"append-only|only retention"):
            _raw(path, sql)
    assert log.verify().ok


def test_a_schema_1_log_is_upgraded_and_can_be_pruned(path: Path, clock: _Clock) -> None:
    with EventLog(path) as log:
        log.append("deployed", deployment_id="d1")
    for sql in (
        "DROP TRIGGER events_no_delete",
        "CREATE TRIGGER events_no_delete BEFORE DELETE ON events "
        "BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END",
        "DROP TABLE checkpoints",
        "PRAGMA user_version = 1",
    ):
        _raw(path, sql)
    clock.now += 5
    with EventLog(path) as log:
        assert log.prune(clock.now).pruned == 1
        assert log.verify().ok


@pytest.mark.parametrize("before", [float("nan"), float("inf"), "yesterday", True])
def test_prune_checks_its_cutoff(log: EventLog, before: Any) -> None:
    with pytest.raises(InvalidRequestError) as info:
        log.prune(before)
    assert info.value.field == "before"
