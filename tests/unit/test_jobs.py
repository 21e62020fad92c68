"""Batch jobs: chunked runs, persisted progress, resume after kill -9, failure, cancel, checks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from phi_engine.errors import ConflictError, InvalidRequestError, NotFoundError
from phi_engine.serving._jobs import JOB_STATES, Job, JobStore
from phi_engine.serving._rows import RowFile

F32 = {"x": np.dtype(np.float32)}


def double(chunk: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"y": chunk["x"] * 2}


def read_output(path: str, names: list[str]) -> dict[str, np.ndarray]:
    with RowFile.open(path, names, {}) as rows:
        return rows.read(0, rows.num_rows)


def write_input(path: Path, x: np.ndarray) -> None:
    """One single-input row file in the format of ``path``'s suffix, written the plain way."""
    if path.suffix == ".npy":
        np.save(path, x)
    elif path.suffix == ".npz":
        np.savez(path, x=x)
    elif path.suffix == ".json":
        path.write_text(json.dumps(x.tolist()))
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in x.tolist()))
    else:
        pa = pytest.importorskip("pyarrow")
        pq = pytest.importorskip("pyarrow.parquet")
        pq.write_table(pa.table({"x": x.tolist()}), path, row_group_size=8)


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    return JobStore(tmp_path / "jobs")


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".json", ".jsonl", ".parquet"])
def test_each_format_round_trips(tmp_path: Path, store: JobStore, suffix: str) -> None:
    x = np.arange(46, dtype=np.float32).reshape(23, 2)  # 23 rows: not a multiple of 5
    write_input(tmp_path / f"rows{suffix}", x)
    job = store.create("dep_1", str(tmp_path / f"rows{suffix}"), None, 5, ["x"], F32)
    assert job.output_url == str(tmp_path / f"rows.out{suffix}")
    done = store.run(job.job_id, double, progress=False)
    assert (done.status, done.rows_done, done.rows_total, done.error) == ("completed", 23, 23, None)
    np.testing.assert_array_equal(read_output(done.output_url, ["y"])["y"], x * 2)
    assert store.get(job.job_id) == done
    assert sorted(p.name for p in (store.root / job.job_id).glob("chunk-*")) == []


@pytest.mark.parametrize("suffix", [".npz", ".json", ".parquet"])
def test_multi_input_multi_output(
    tmp_path: Path, store: JobStore, rng: np.random.Generator, suffix: str
) -> None:
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    a = rng.standard_normal((17, 3)).astype(np.float32)
    b = rng.integers(0, 9, 17)
    source = tmp_path / f"in{suffix}"
    if suffix == ".json":
        source.write_text(json.dumps({"a": a.tolist(), "b": b.tolist()}))
    else:
        from phi_engine.serving._rows import write_rows

        write_rows(source, {"a": a, "b": b})
    dtypes = {"a": np.dtype(np.float32), "b": np.dtype(np.int64)}

    def infer(chunk: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"s": chunk["a"].sum(axis=1) + chunk["b"], "p": chunk["a"] * 2}

    out = tmp_path / f"out{suffix}"
    job = store.create("dep_1", str(source), str(out), 4, ["a", "b"], dtypes)
    assert store.run(job.job_id, infer, progress=False).status == "completed"
    got = read_output(str(out), ["s", "p"])
    np.testing.assert_allclose(got["s"], a.sum(axis=1) + b, rtol=1e-6)
    np.testing.assert_array_equal(got["p"], a * 2)


def test_batch_size_larger_than_file_and_of_one(tmp_path: Path, store: JobStore) -> None:
    x = np.arange(7, dtype=np.float32).reshape(7, 1)
    np.save(tmp_path / "rows.npy", x)
    for batch_size, out in ((100, "big.npy"), (1, "one.npy")):
        job = store.create(
            "d", str(tmp_path / "rows.npy"), str(tmp_path / out), batch_size, ["x"], F32
        )
        store.run(job.job_id, double, progress=False)
        np.testing.assert_array_equal(np.load(tmp_path / out), x * 2)


def test_progress_bar_on_and_off(
    tmp_path: Path, store: JobStore, capfd: pytest.CaptureFixture[str]
) -> None:
    np.save(tmp_path / "rows.npy", np.zeros((30, 2), np.float32))
    quiet = store.create("d", str(tmp_path / "rows.npy"), str(tmp_path / "q.npy"), 8, ["x"], F32)
    store.run(quiet.job_id, double, progress=False)
    assert capfd.readouterr().err == ""
    shown = store.create("d", str(tmp_path / "rows.npy"), str(tmp_path / "s.npy"), 8, ["x"], F32)
    store.run(shown.job_id, double, progress=True)
    err = capfd.readouterr().err
    assert shown.job_id in err and "30/30" in err and "row" in err


CRASHING_RUNNER = """
import sys, time
from phi_engine.serving._jobs import JobStore
root, job_id, log = sys.argv[1:4]

def slow_double(chunk):
    x = chunk["x"]
    with open(log, "a") as f:
        f.write(f"{int(x[0, 0]) // 10}\\n")  # x[:, 0] is the row number, 10 rows a chunk
    time.sleep(0.05)
    return {"y": x * 2}

JobStore(root).run(job_id, slow_double, progress=False)
"""


def test_resume_after_kill_9_recomputes_only_missing_chunks(
    tmp_path: Path, store: JobStore
) -> None:
    x = np.stack([np.arange(300), np.arange(300) * 0.5], axis=1).astype(np.float32)
    np.save(tmp_path / "rows.npy", x)
    job = store.create("d", str(tmp_path / "rows.npy"), str(tmp_path / "out.npy"), 10, ["x"], F32)
    log = tmp_path / "computed.log"
    log.touch()
    child = subprocess.Popen(
        [sys.executable, "-c", CRASHING_RUNNER, str(store.root), job.job_id, str(log)]
    )
    try:
        deadline = time.monotonic() + 30
        while (
            len(log.read_text().split()) < 6
            and child.poll() is None
            and time.monotonic() < deadline
        ):
            time.sleep(0.01)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    folder = store.root / job.job_id
    finished = {int(p.stem.split("-")[1]) for p in folder.glob("chunk-*.npz")}
    computed_before = [int(i) for i in log.read_text().split()]
    assert finished and finished <= set(computed_before) and len(finished) < 30
    crashed = store.get(job.job_id)
    # The kill may land between a chunk's file and the manifest's count of it.
    assert crashed.status == "running" and crashed.rows_done // 10 in (
        len(finished),
        len(finished) - 1,
    )
    assert [j.job_id for j in store.incomplete()] == [job.job_id]
    assert not (tmp_path / "out.npy").exists()

    recomputed: list[int] = []

    def recording_double(chunk: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        recomputed.append(int(chunk["x"][0, 0]) // 10)
        return double(chunk)

    done = JobStore(store.root).run(job.job_id, recording_double, progress=False)
    assert done.status == "completed" and done.rows_done == 300
    assert sorted(recomputed) == sorted(set(range(30)) - finished)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), x * 2)  # every row once, in order
    assert sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock")) == ["job.json"]
    assert store.incomplete() == []


def test_failed_job_is_resumed_by_a_second_run(tmp_path: Path, store: JobStore) -> None:
    x = np.arange(20, dtype=np.float32).reshape(20, 1)
    np.save(tmp_path / "rows.npy", x)
    job = store.create("d", str(tmp_path / "rows.npy"), str(tmp_path / "out.npy"), 4, ["x"], F32)
    calls: list[float] = []

    def flaky(chunk: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if chunk["x"][0, 0] == 12:
            raise RuntimeError("device lost")
        calls.append(float(chunk["x"][0, 0]))
        return double(chunk)

    def flaky_no_more(chunk: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls.append(float(chunk["x"][0, 0]))
        return double(chunk)

    failed = store.run(job.job_id, flaky, progress=False)
    assert (failed.status, failed.rows_done) == ("failed", 12)
    assert failed.error == "RuntimeError: device lost"
    assert not (tmp_path / "out.npy").exists()
    assert store.incomplete() == []

    assert calls == [0, 4, 8]
    calls.clear()
    done = store.run(job.job_id, flaky_no_more, progress=False)
    assert (done.status, done.error, done.rows_done) == ("completed", None, 20)
    assert calls == [12, 16]  # the chunks saved before the failure are not recomputed
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), x * 2)


def test_bad_model_output_fails_the_job(tmp_path: Path, store: JobStore) -> None:
    np.save(tmp_path / "rows.npy", np.zeros((6, 1), np.float32))
    job = store.create("d", str(tmp_path / "rows.npy"), None, 4, ["x"], F32)
    failed = store.run(job.job_id, lambda chunk: {"y": np.zeros(1)}, progress=False)
    assert failed.status == "failed" and "'y'" in (failed.error or "")


def test_stop_cancels_after_the_current_chunk(tmp_path: Path, store: JobStore) -> None:
    np.save(tmp_path / "rows.npy", np.zeros((50, 1), np.float32))
    job = store.create("d", str(tmp_path / "rows.npy"), str(tmp_path / "out.npy"), 5, ["x"], F32)
    stop = threading.Event()
    chunks = 0

    def stop_after_two(chunk: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        nonlocal chunks
        chunks += 1
        if chunks == 2:
            stop.set()
        return double(chunk)

    cancelled = store.run(job.job_id, stop_after_two, progress=False, stop=stop)
    assert (cancelled.status, cancelled.rows_done, chunks) == ("cancelled", 10, 2)
    assert not (tmp_path / "out.npy").exists()
    assert store.run(job.job_id, double, progress=False) == cancelled  # cancelled is final
    assert list((store.root / job.job_id).glob("chunk-*")) == []


def test_cancel_from_another_thread_and_states(tmp_path: Path, store: JobStore) -> None:
    np.save(tmp_path / "rows.npy", np.zeros((40, 1), np.float32))
    job = store.create("d", str(tmp_path / "rows.npy"), str(tmp_path / "out.npy"), 4, ["x"], F32)
    started, release = threading.Event(), threading.Event()

    def blocking(chunk: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        started.set()
        release.wait(10)
        return double(chunk)

    result: list[Job] = []
    runner = threading.Thread(
        target=lambda: result.append(store.run(job.job_id, blocking, progress=False))
    )
    runner.start()
    assert started.wait(10)
    with pytest.raises(ConflictError):
        store.run(job.job_id, double, progress=False)
    assert store.cancel(job.job_id).status == "cancelled"
    release.set()
    runner.join(10)
    assert result[0].status == "cancelled" and result[0].rows_done <= 4

    queued = store.create("d", str(tmp_path / "rows.npy"), str(tmp_path / "o2.npy"), 4, ["x"], F32)
    assert store.cancel(queued.job_id).status == "cancelled"
    finished = store.create(
        "d", str(tmp_path / "rows.npy"), str(tmp_path / "o3.npy"), 4, ["x"], F32
    )
    store.run(finished.job_id, double, progress=False)
    with pytest.raises(ConflictError) as err:
        store.cancel(finished.job_id)
    assert err.value.field == "job_id"


@pytest.mark.parametrize(
    ("input_name", "output", "batch_size", "field"),
    [
        ("missing.npy", None, 4, "input_url"),
        ("rows.csv", None, 4, "input_url"),
        ("ragged.json", None, 4, "input_url"),
        ("wrong_names.npz", None, 4, "input_url"),
        ("floats.json", None, 4, "input_url"),  # float rows cannot become an int32 input
        ("rows.npy", None, 0, "batch_size"),
        ("rows.npy", None, True, "batch_size"),
        ("rows.npy", "rows.npy", 4, "output_url"),
        ("rows.npy", "out.txt", 4, "output_url"),
        ("rows.npy", "no_such_dir/out.npy", 4, "output_url"),
        ("rows.npy", "memory://elsewhere/out.npy", 4, "output_url"),
    ],
)
def test_bad_requests_are_refused_and_leave_nothing(
    tmp_path: Path,
    store: JobStore,
    input_name: str,
    output: str | None,
    batch_size: int,
    field: str,
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    np.save(data / "rows.npy", np.zeros((4, 2), np.int32))
    (data / "rows.csv").write_text("1,2\n")
    (data / "ragged.json").write_text("[[1, 2], [3]]")
    (data / "floats.json").write_text("[[1.5, 2.0]]")
    np.savez(data / "wrong_names.npz", y=np.zeros((4, 2)))
    output_url = output if output is None or "://" in output else str(data / output)
    with pytest.raises(InvalidRequestError) as err:
        store.create(
            "d", str(data / input_name), output_url, batch_size, ["x"], {"x": np.dtype(np.int32)}
        )
    assert err.value.field == field
    assert list(store.root.iterdir()) == []


def test_npy_output_for_several_outputs_is_refused_up_front(
    tmp_path: Path, store: JobStore
) -> None:
    np.save(tmp_path / "rows.npy", np.zeros((4, 2), np.float32))
    with pytest.raises(InvalidRequestError) as err:
        store.create(
            "d",
            str(tmp_path / "rows.npy"),
            str(tmp_path / "o.npy"),
            2,
            ["x"],
            F32,
            output_names=["a", "b"],
        )
    assert err.value.field == "output_url"
    job = store.create(
        "d", str(tmp_path / "rows.npy"), None, 2, ["x"], F32, output_names=["a", "b"]
    )
    assert job.output_url.endswith("rows.out.npz")


def test_lookup_listing_and_views(tmp_path: Path, store: JobStore) -> None:
    np.save(tmp_path / "rows.npy", np.zeros((4, 2), np.float32))
    first = store.create("dep_a", str(tmp_path / "rows.npy"), None, 3, ["x"], F32)
    second = store.create(
        "dep_b", (tmp_path / "rows.npy").as_uri(), str(tmp_path / "b.json"), 3, ["x"], F32
    )
    assert first.job_id.startswith("job_") and len(first.job_id) == 20
    int(first.job_id[4:], 16)
    assert [j.job_id for j in store.list()] == [first.job_id, second.job_id]
    assert [j.job_id for j in store.list("dep_b")] == [second.job_id]
    assert [j.job_id for j in JobStore(store.root).incomplete()] == [first.job_id, second.job_id]
    body = first.to_dict()
    assert (
        body["status"] == "queued"
        and body["status"] in JOB_STATES
        and json.loads(json.dumps(body)) == body
    )
    store.run(first.job_id, double, progress=False)
    view = store.get(first.job_id)._repr_html_()
    assert '<progress value="4" max="4">' in view and "completed" in view and "4/4 rows" in view
    for bad in ("job_0123456789abcdef", "../jobs", "nope"):
        with pytest.raises(NotFoundError) as err:
            store.get(bad)
        assert err.value.field == "job_id"


def test_output_never_half_written_under_its_name(tmp_path: Path, store: JobStore) -> None:
    np.save(tmp_path / "rows.npy", np.ones((12, 2), np.float32))
    job = store.create("d", str(tmp_path / "rows.npy"), str(tmp_path / "out.jsonl"), 5, ["x"], F32)
    seen: list[list[str]] = []

    def watching(chunk: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        seen.append(sorted(p.name for p in tmp_path.iterdir()))
        return {"y": chunk["x"] + 1}

    store.run(job.job_id, watching, progress=False)
    assert all("out.jsonl" not in names for names in seen)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jobs", "out.jsonl", "rows.npy"]
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 12
