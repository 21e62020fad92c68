"""Bad input to the ``Engine`` API gets a ``phi_engine.errors`` exception naming the field, and
loses nothing: the registry, deployments, jobs and home directory are as they were, and a valid
call still works afterwards. Each test names what used to happen instead."""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from phi_engine.engine import Engine
from phi_engine.errors import ConflictError, InvalidRequestError, NotFoundError
from phi_engine.registry import build_manifest
from phi_test_models.tiny import mlp, mlp_reference

X = [[0.1, 0.2, 0.3, 0.4]]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("models")
    return mlp(root / "m0.onnx", seed=0), mlp(root / "m1.onnx", seed=1)


@pytest.fixture
def engine(tmp_path: Path, models: tuple[Path, Path]) -> Iterator[Engine]:
    eng = Engine(tmp_path / "home", progress=False, rehash_interval_s=None)
    eng.register("mlp", "onnx", "1.0", str(models[0]))
    eng.register("mlp", "onnx", "2.0", str(models[1]))
    try:
        yield eng
    finally:
        eng.close()


def _ids(eng: Engine) -> list[str]:
    return [m.model_id for m in eng.models()]


def _works(eng: Engine, dep_id: str) -> None:
    out = eng.infer(dep_id, {"x": X}).outputs["y"]
    assert out.shape == (1, 3)


def _rows(home: Path, table: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(home / "registry.db")
    try:
        return sorted(conn.execute(f"SELECT * FROM {table}").fetchall())
    finally:
        conn.close()


# ---- the engine home --------------------------------------------------------------------------


def test_home_that_is_not_a_usable_directory(tmp_path: Path) -> None:
    """``Engine(home=...)`` with a file, a path under a file, a non-path or a corrupt
    ``registry.db`` used to raise FileExistsError, NotADirectoryError, TypeError or
    sqlite3.DatabaseError; now InvalidRequestError(field="home"), and nothing is changed."""
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "registry.db").write_bytes(b"not a database" * 50)
    for home in (afile, afile / "below", 5, ["x"], "/" + "a" * 5000, corrupt):
        with pytest.raises(InvalidRequestError) as info:
            Engine(home, progress=False, rehash_interval_s=None)  # type: ignore[arg-type]
        assert info.value.field == "home"
    assert afile.read_text() == "keep me"
    assert (corrupt / "registry.db").read_bytes() == b"not a database" * 50
    with Engine(tmp_path / "good", progress=False, rehash_interval_s=None) as eng:
        assert eng.models() == []


# ---- ids that are not strings -----------------------------------------------------------------


def test_ids_that_are_not_strings_are_not_found(engine: Engine) -> None:
    """A list (or dict) as an id used to leak sqlite3.ProgrammingError ("type 'list' is not
    supported") or TypeError ("unhashable type"); now NotFoundError naming the id's field."""
    model_id = engine.models()[0].model_id
    dep = engine.deploy(model_id)
    before = _ids(engine)
    bad: Any = ["x"]
    calls = {
        "model_id": [
            lambda: engine.model(bad),
            lambda: engine.manifest(bad),
            lambda: engine.delete_model(bad),
            lambda: engine.deploy(bad),
            lambda: engine.validate(bad),
            lambda: engine.kill_switch(bad, "why"),
            lambda: engine.lift_kill_switch(bad),
            lambda: engine.update(dep.deployment_id, bad),
        ],
        "deployment_id": [
            lambda: engine.infer(bad, {"x": X}),
            lambda: engine.undeploy(bad),
            lambda: list(engine.logs(bad)),
            lambda: engine.profile({"a": 1}),  # type: ignore[arg-type]
        ],
        "job_id": [lambda: engine.job(bad), lambda: engine.cancel_job(bad)],
    }
    for field, fns in calls.items():
        for fn in fns:
            with pytest.raises(NotFoundError) as info:
                fn()
            assert info.value.field == field
    assert engine.blocked(bad) is None
    with pytest.raises(InvalidRequestError) as info:
        engine.models(bad)
    assert info.value.field == "name"
    with pytest.raises(InvalidRequestError) as info:
        engine.register("other", "onnx", "1", "unused.onnx", signature="x", signer=bad)
    assert info.value.field == "signer"
    assert _ids(engine) == before
    assert engine.deployments() == [dep]
    _works(engine, dep.deployment_id)


def test_undeploy_from_many_threads_at_once_undeploys_once(engine: Engine) -> None:
    """Every thread's undeploy succeeded, each stopping the deployment and logging it; now one
    does and the others get NotFoundError."""
    dep = engine.deploy(engine.models()[0].model_id)
    start = threading.Barrier(8)
    outcomes: list[str] = []

    def undeploy() -> None:
        start.wait()
        try:
            engine.undeploy(dep.deployment_id)
            outcomes.append("ok")
        except NotFoundError:
            outcomes.append("not found")

    threads = [threading.Thread(target=undeploy) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == ["not found"] * 7 + ["ok"]
    events = [e for e in engine.logs(dep.deployment_id) if e.event == "undeployed"]
    assert len(events) == 1
    assert engine.deployments() == []


def test_undeploy_waiting_on_the_database_holds_up_no_other_deployment(engine: Engine) -> None:
    """undeploy wrote its status while holding the engine's lock, so while another connection
    held the database's write lock every lookup (each /v2 request, /health, /metrics) waited up
    to the 30 s busy timeout with it."""
    models = engine.models()
    gone, kept = engine.deploy(models[0].model_id), engine.deploy(models[1].model_id)
    other = sqlite3.connect(engine.home / "registry.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # someone else writing
    done = threading.Event()
    worker = threading.Thread(target=lambda: (engine.undeploy(gone.deployment_id), done.set()))
    worker.start()
    try:
        time.sleep(0.2)
        assert not done.is_set()  # waiting on the database
        t0 = time.monotonic()
        assert engine.deployments() == [kept]
        _works(engine, kept.deployment_id)
        assert time.monotonic() - t0 < 5
    finally:
        other.execute("COMMIT")
        other.close()
        worker.join(30)
    assert done.is_set() and engine.deployments() == [kept]


def test_undeploy_whose_status_write_fails_leaves_the_deployment_serving(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    dep = engine.deploy(engine.models()[0].model_id)

    def fail(*args: Any) -> None:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(engine, "_set_status", fail)
    with pytest.raises(sqlite3.OperationalError):
        engine.undeploy(dep.deployment_id)
    assert engine.deployments() == [dep]
    _works(engine, dep.deployment_id)


# ---- register ---------------------------------------------------------------------------------


def test_register_with_a_path_too_long(engine: Engine, models: tuple[Path, Path]) -> None:
    """A storage_url longer than the file system allows used to raise OSError (ENAMETOOLONG)
    from the local-directory check, as did build_manifest; now InvalidRequestError naming
    storage_url, with no row and nothing left in staging."""
    before = _ids(engine)
    long = "/" + "a" * 5000 + ".onnx"
    for url in (long, "/" + "a" * 300 + "/m.onnx", "file://" + long):
        with pytest.raises(InvalidRequestError) as info:
            engine.register("long", "onnx", "1", url)
        assert info.value.field == "storage_url"
    with pytest.raises(InvalidRequestError) as info:
        build_manifest(long)
    assert info.value.field == "storage_url"
    assert _ids(engine) == before
    assert list((engine.home / "tmp").iterdir()) == []
    record = engine.register("long", "onnx", "1", str(models[0]))
    assert _ids(engine) == [*before, record.model_id]


def test_register_with_an_empty_file_url(
    engine: Engine, models: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``file://`` with no path read as the current directory and registered a copy of it."""
    monkeypatch.chdir(tmp_path)
    before = _ids(engine)
    for url in ("file://", "FILE://", "file://?x"):
        with pytest.raises(InvalidRequestError) as info:
            engine.register("empty", "onnx", "1", url)
        assert info.value.field == "storage_url"
    assert _ids(engine) == before
    record = engine.register("empty", "onnx", "1", models[0].as_uri())
    assert _ids(engine) == [*before, record.model_id]


def test_register_with_metadata_nested_too_deep(engine: Engine, models: tuple[Path, Path]) -> None:
    """metadata (or model_card) nested thousands deep used to raise RecursionError out of
    json.dumps; now InvalidRequestError naming the field, and nothing is registered."""
    deep: dict[str, Any] = {}
    inner = deep
    for _ in range(5000):
        inner["a"] = {}
        inner = inner["a"]
    before = _ids(engine)
    for field in ("metadata", "model_card"):
        with pytest.raises(InvalidRequestError) as info:
            engine.register("deep", "onnx", "1", str(models[0]), **{field: deep})
        assert info.value.field == field
    assert _ids(engine) == before
    assert engine.register("deep", "onnx", "1", str(models[0]), metadata={"a": {"b": 1}})


# ---- deploy -----------------------------------------------------------------------------------


def test_deploy_with_fields_of_the_wrong_kind(engine: Engine) -> None:
    """resource_allocation or slo_ms as a list, or limits as a dict, used to raise TypeError or
    AttributeError; an unknown slo_ms class was blamed on "priority"; a max_batch over 2**30
    failed in the native scheduler with no field, and a large one hung deploy in warm-up. Now
    each is InvalidRequestError naming the field, and no deployment row is left behind."""
    model_id = engine.models()[0].model_id
    rows = _rows(engine.home, "deployments")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"resource_allocation": [1]}, "resource_allocation"),
        ({"slo_ms": [1]}, "slo_ms"),
        ({"slo_ms": {"bogus": 5.0}}, "slo_ms"),
        ({"limits": {"max_bytes": 1}}, "limits"),
        ({"max_batch": 1 << 40}, "max_batch"),
        ({"max_batch": (1 << 20) + 1}, "max_batch"),
    ]
    for kwargs, field in cases:
        with pytest.raises(InvalidRequestError) as info:
            engine.deploy(model_id, **kwargs)
        assert info.value.field == field, kwargs
    assert _rows(engine.home, "deployments") == rows
    assert engine.deployments() == []
    dep = engine.deploy(model_id, slo_ms={"high": 50.0}, max_batch=8)
    _works(engine, dep.deployment_id)


# ---- update -----------------------------------------------------------------------------------


def test_update_with_bad_canary_percent_or_step_seconds(engine: Engine) -> None:
    """canary_percent as a string or None used to raise ValueError/TypeError from float();
    step_seconds=-1 or NaN raised ValueError from time.sleep *after* the update had begun,
    leaving the deployment stuck mid-update (25 % on the new version, every later update
    refused as "already being updated"). Now InvalidRequestError naming the field, before
    anything changes."""
    old, new = (m.model_id for m in engine.models())
    dep = engine.deploy(old)
    bad_percent: list[Any] = ["abc", None, math.nan, 0, 100]
    for value in bad_percent:
        with pytest.raises(InvalidRequestError) as info:
            engine.update(dep.deployment_id, new, "canary", canary_percent=value)
        assert info.value.field == "canary_percent"
    bad_step: list[Any] = [-1, math.nan, math.inf, "1", None, True]
    for value in bad_step:
        with pytest.raises(InvalidRequestError) as info:
            engine.update(dep.deployment_id, new, "rolling", step_seconds=value)
        assert info.value.field == "step_seconds"
    assert dep.candidate is None
    assert dep.model_id == old
    with pytest.raises(ConflictError):
        engine.rollback(dep.deployment_id)  # no update in progress
    engine.update(dep.deployment_id, new, "rolling", step_seconds=0, canary_percent=np.float64(5))
    assert dep.model_id == new
    out = engine.infer(dep.deployment_id, {"x": X}).outputs["y"]
    np.testing.assert_allclose(out, mlp_reference(np.asarray(X, np.float32), seed=1), rtol=1e-5)


# ---- profile, logs, validate ------------------------------------------------------------------


def test_profile_with_batch_sizes_of_the_wrong_kind(engine: Engine) -> None:
    """batch_sizes=8 or ["a"] used to raise TypeError while filtering them against max_batch;
    now InvalidRequestError(field="batch_sizes")."""
    dep = engine.deploy(engine.models()[0].model_id)
    bad: list[Any] = [8, ["a"], [2.5], [None], "8"]
    for sizes in bad:
        with pytest.raises(InvalidRequestError) as info:
            engine.profile(dep.deployment_id, sizes)
        assert info.value.field == "batch_sizes"
    prof = engine.profile(dep.deployment_id, [1, np.int64(2)], requests=4)
    assert prof.to_dict()["optimization_suggestions"] is not None


def test_live_profile_before_any_traffic_names_live(engine: Engine) -> None:
    """It said "results must be a non-empty list" naming ``results``, an internal argument."""
    dep = engine.deploy(engine.models()[0].model_id)
    with pytest.raises(InvalidRequestError) as info:
        engine.profile(dep.deployment_id, live=True)
    assert info.value.field == "live" and "no requests" in info.value.message
    _works(engine, dep.deployment_id)
    assert engine.profile(dep.deployment_id, live=True).source == "live"


def test_logs_with_a_limit_sqlite_cannot_bind(engine: Engine) -> None:
    """logs(limit=10**30) used to raise OverflowError ("Python int too large to convert to
    SQLite INTEGER"); a limit over every event now returns every event."""
    everything = [e.seq for e in engine.logs()]
    assert everything
    assert [e.seq for e in engine.logs(limit=10**30)] == everything
    assert [e.seq for e in engine.logs(limit=1)] == everything[-1:]


def test_validate_standards_as_one_string_or_not_a_list(engine: Engine) -> None:
    """standards="GDPR" used to be split into characters ("unknown standard 'G'") and
    standards=5 raised TypeError; now one string is one standard, and a non-list is
    InvalidRequestError(field="standards")."""
    model_id = engine.models()[0].model_id
    one = engine.validate(model_id, standards="GDPR")
    listed = engine.validate(model_id, standards=["GDPR"])
    assert one.to_dict()["compliance"] == listed.to_dict()["compliance"]
    bad: list[Any] = [5, b"GDPR", [["GDPR"]], [None]]
    for standards in bad:
        with pytest.raises(InvalidRequestError) as info:
            engine.validate(model_id, standards=standards)
        assert info.value.field == "standards"


# ---- batch jobs -------------------------------------------------------------------------------


def test_run_job_with_an_unknown_priority_creates_no_job(engine: Engine, tmp_path: Path) -> None:
    """run_job(priority="bogus") used to create the job, start it and return it ``failed``
    (or ``queued`` with wait=False, to fail later), leaving a job folder behind; now it is
    refused with InvalidRequestError(field="priority") before any job exists."""
    dep = engine.deploy(engine.models()[0].model_id)
    rows = tmp_path / "rows.npy"
    np.save(rows, np.ones((5, 4), np.float32))
    for wait in (True, False):
        with pytest.raises(InvalidRequestError) as info:
            engine.run_job(
                dep.deployment_id, str(rows), str(tmp_path / "o.npy"), wait=wait, priority="bogus"
            )
        assert info.value.field == "priority"
    assert engine.jobs() == []
    assert not (tmp_path / "o.npy").exists()
    job = engine.run_job(dep.deployment_id, str(rows), str(tmp_path / "o.npy"), priority="high")
    assert job.status == "completed"
    assert np.load(tmp_path / "o.npy").shape == (5, 3)


# ---- serve ------------------------------------------------------------------------------------


def test_serve_with_a_bad_port_or_data_dir(engine: Engine, tmp_path: Path) -> None:
    """serve(port=-1) used to start the server and fail inside uvicorn ("Servname not
    supported"), and port=99999 silently bound another port; a data_dir that is a file raised
    FileExistsError. Now InvalidRequestError naming the field, before any server starts."""
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    bad_port: list[Any] = [-1, 65536, 99999, "8000", True]
    for port in bad_port:
        with pytest.raises(InvalidRequestError) as info:
            engine.serve(port=port)
        assert info.value.field == "port"
    for data_dir in (afile, afile / "below", "/" + "a" * 5000):
        with pytest.raises(InvalidRequestError) as info:
            engine.serve(port=8000, data_dir=data_dir)
        assert info.value.field == "data_dir"
    assert afile.read_text() == "keep me"
    assert [m.version for m in engine.models()] == ["1.0", "2.0"]


def test_fetch_errors_say_what_went_wrong_in_words(engine: Engine, tmp_path: Path) -> None:
    """The message carried Python's exception class and errno ("OSError: [Errno 36] ...")."""
    (tmp_path / "f").write_text("a file, not a folder")
    for url, words in (
        ("/" + "a" * 300 + ".onnx", "too long"),
        (str(tmp_path / "f" / "x.onnx"), "Not a directory"),
    ):
        with pytest.raises(InvalidRequestError) as info:
            engine.register("fetch", "onnx", "1", url)
        message = info.value.message
        assert info.value.field == "storage_url" and words in message, message
        assert "Errno" not in message and "Error:" not in message, message
