"""Row files for batch jobs: each format read in chunks, results written atomically."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from phi_engine.errors import InvalidRequestError, UnsupportedError
from phi_engine.serving._rows import (
    RowFile,
    atomic_write,
    default_output_path,
    write_rows,
)

F32 = {"x": np.dtype(np.float32)}


def test_npy_reads_chunks_as_float32_copies(tmp_path: Path) -> None:
    x = np.arange(20, dtype=np.float64).reshape(10, 2)
    np.save(tmp_path / "rows.npy", x)
    with RowFile.open(str(tmp_path / "rows.npy"), ["x"], F32) as rows:
        chunk = rows.read(3, 7)["x"]
    assert rows.num_rows == 10
    assert chunk.dtype == np.float32 and chunk.flags.writeable
    np.testing.assert_array_equal(chunk, x[3:7])


def test_npy_is_memory_mapped_not_loaded(tmp_path: Path) -> None:
    path = tmp_path / "rows.npy"
    np.save(path, np.zeros((100, 4), np.float32))
    with RowFile.open(str(path), ["x"], F32) as rows:
        # A write to the file after opening shows through only if the rows are mapped, not copied.
        disk = np.load(path, mmap_mode="r+")
        disk[50:] = 7.0
        disk.flush()
        del disk
        assert (rows.read(60, 61)["x"] == 7.0).all()


def test_file_url_and_fsspec_url(tmp_path: Path) -> None:
    import fsspec

    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    np.save(tmp_path / "rows.npy", x)
    with RowFile.open((tmp_path / "rows.npy").as_uri(), ["x"], F32) as rows:
        np.testing.assert_array_equal(rows.read(0, 3)["x"], x)
    with fsspec.open("memory://phi-test/rows.json", "w") as f:
        json.dump(x.tolist(), f)
    with RowFile.open("memory://phi-test/rows.json", ["x"], F32) as rows:
        np.testing.assert_array_equal(rows.read(1, 3)["x"], x[1:])


def test_json_forms(tmp_path: Path) -> None:
    (tmp_path / "list.json").write_text(json.dumps([[1, 2], [3, 4], [5, 6]]))
    (tmp_path / "named.json").write_text(json.dumps({"a": [1, 2, 3], "b": [[1.5], [2.5], [3.5]]}))
    with RowFile.open(str(tmp_path / "list.json"), ["x"], F32) as rows:
        np.testing.assert_array_equal(rows.read(1, 3)["x"], [[3, 4], [5, 6]])
    dtypes = {"a": np.dtype(np.int64), "b": np.dtype(np.float32)}
    with RowFile.open(str(tmp_path / "named.json"), ["b", "a"], dtypes) as rows:
        chunk = rows.read(0, 2)
    np.testing.assert_array_equal(chunk["a"], [1, 2])
    np.testing.assert_array_equal(chunk["b"], [[1.5], [2.5]])


def test_jsonl_forms(tmp_path: Path) -> None:
    (tmp_path / "bare.jsonl").write_text("[1, 2]\n[3, 4]\n\n[5, 6]\n")
    lines = [{"a": i, "b": [i, i + 1]} for i in range(4)]
    (tmp_path / "named.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    with RowFile.open(str(tmp_path / "bare.jsonl"), ["x"], F32) as rows:
        assert rows.num_rows == 3
        np.testing.assert_array_equal(rows.read(2, 3)["x"], [[5, 6]])
    dtypes = {"a": np.dtype(np.int32), "b": np.dtype(np.int32)}
    with RowFile.open(str(tmp_path / "named.jsonl"), ["a", "b"], dtypes) as rows:
        np.testing.assert_array_equal(rows.read(1, 4)["b"], [[1, 2], [2, 3], [3, 4]])


def test_parquet_reads_across_row_groups(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    x = np.arange(46, dtype=np.float32).reshape(23, 2)
    table = pa.table({"x": [row.tolist() for row in x], "k": np.arange(23)})
    pq.write_table(table, tmp_path / "rows.parquet", row_group_size=7)
    dtypes = {"x": np.dtype(np.float32), "k": np.dtype(np.int64)}
    with RowFile.open(str(tmp_path / "rows.parquet"), ["x", "k"], dtypes) as rows:
        chunks = [rows.read(s, min(s + 5, 23)) for s in range(0, 23, 5)]
    np.testing.assert_array_equal(np.concatenate([c["x"] for c in chunks]), x)
    np.testing.assert_array_equal(np.concatenate([c["k"] for c in chunks]), np.arange(23))


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".json", ".jsonl", ".parquet"])
def test_write_rows_round_trips(tmp_path: Path, suffix: str) -> None:
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    y = np.arange(24, dtype=np.float32).reshape(4, 3, 2)
    path = tmp_path / f"out{suffix}"
    write_rows(path, {"y": y})
    with RowFile.open(str(path), ["y"], {"y": np.dtype(np.float32)}) as rows:
        np.testing.assert_array_equal(rows.read(0, 4)["y"], y)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_write_rows_refuses_npy_for_several_outputs(tmp_path: Path) -> None:
    columns = {"a": np.zeros(2), "b": np.ones(2)}
    with pytest.raises(InvalidRequestError) as err:
        write_rows(tmp_path / "out.npy", columns)
    assert err.value.field == "output_url"
    write_rows(tmp_path / "out.npz", {"file": np.zeros(2), "allow_pickle": np.ones(2)})
    with np.load(tmp_path / "out.npz") as out:
        assert sorted(out.files) == ["allow_pickle", "file"]


def test_atomic_write_keeps_old_file_and_no_temp_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    write_rows(path, {"y": np.arange(3)})
    before = path.read_bytes()

    def half_then_fail(f: object) -> None:
        f.write(b'{"y": [9')  # type: ignore[attr-defined]
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_then_fail)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


@pytest.mark.parametrize(
    ("name", "content", "names"),
    [
        ("ragged.json", json.dumps([[1, 2], [3]]), ["x"]),
        ("floats.json", json.dumps({"x": [1.5, 2.5]}), ["x"]),  # floats into int32
        ("strings.json", json.dumps(["a", "b"]), ["x"]),
        ("wrong.json", json.dumps({"z": [1, 2]}), ["x"]),
        ("two.json", json.dumps([1, 2]), ["x", "z"]),
        ("counts.json", json.dumps({"x": [1, 2], "z": [1]}), ["x", "z"]),
        ("empty.json", "[]", ["x"]),
        ("broken.json", "[1, 2", ["x"]),
        ("mixed.jsonl", '{"x": 1}\n[2]\n', ["x"]),
        ("rows.csv", "1\n2\n", ["x"]),
        ("missing.npy", None, ["x"]),
    ],
)
def test_bad_files_are_refused_naming_input_url(
    tmp_path: Path, name: str, content: str | None, names: list[str]
) -> None:
    if content is not None:
        (tmp_path / name).write_text(content)
    dtypes = {n: np.dtype(np.int32) for n in names}
    with pytest.raises(InvalidRequestError) as err:
        RowFile.open(str(tmp_path / name), names, dtypes)
    assert err.value.field == "input_url"


def test_parquet_without_pyarrow_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "rows.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(UnsupportedError, match=r"pip install phi_engine\[parquet\]") as err:
        RowFile.open(str(tmp_path / "rows.parquet"), ["x"], F32)
    assert err.value.field == "input_url"
    with pytest.raises(UnsupportedError, match=r"phi_engine\[parquet\]") as err:
        write_rows(tmp_path / "out.parquet", {"y": np.zeros(2)})
    assert err.value.field == "output_url"


def test_default_output_path() -> None:
    assert default_output_path("/d/rows.npy") == "/d/rows.out.npy"
    assert default_output_path("/d/rows.npy", num_outputs=2) == "/d/rows.out.npz"
    assert default_output_path("file:///d/rows.jsonl", num_outputs=2) == "file:///d/rows.out.jsonl"
