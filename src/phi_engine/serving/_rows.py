"""Files of rows for batch jobs: read them in chunks, write results atomically (API.md §1.3).

A row file maps each model input name to an array whose first axis is the row. The format follows
the suffix: ``.npy`` (one array, for a single-input model), ``.npz`` (one array per name), ``.json``
(a list of rows, or ``{name: list of rows}``), ``.jsonl`` (one row per line: a bare value, or
``{name: value}``) and ``.parquet`` (one column per name, cells are lists; needs pyarrow).
"""

from __future__ import annotations

import bisect
import io
import json
import os
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType, TracebackType
from typing import IO, Any, Literal, Protocol
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np

from phi_engine.errors import InvalidRequestError, UnsupportedError

__all__ = [
    "FORMATS",
    "RowFile",
    "atomic_write",
    "default_output_path",
    "local_path",
    "save_npz",
    "write_rows",
]

FORMATS = (".npy", ".npz", ".json", ".jsonl", ".parquet")

# Formats holding one unnamed array: a model with several outputs needs a named format instead.
_SINGLE_ARRAY = (".npy",)


class _Source(Protocol):
    names: list[str]
    num_rows: int

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]: ...


def suffix_of(url: str) -> str:
    """The lower-case suffix of a path or URL, ignoring any query string."""
    return Path(urlparse(url).path if "://" in url else url).suffix.lower()


def local_path(url: str) -> str | None:
    """The local file system path of ``url`` (a plain path or ``file://``), or None if remote."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            return None
        return url2pathname(parsed.path)
    # A one-letter scheme is a Windows drive ("C:\\rows.npy"), not a URL.
    if parsed.scheme == "" or len(parsed.scheme) == 1:
        return url
    return None


def _pyarrow(field: str) -> tuple[ModuleType, ModuleType]:
    """Import pyarrow lazily: it is an optional dependency (``phi_engine[parquet]``)."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as exc:
        raise UnsupportedError(
            ".parquet files need pyarrow: pip install phi_engine[parquet]", field=field
        ) from exc
    return pyarrow, pyarrow.parquet


class _ArraySource:
    """Columns already held as arrays (possibly memory-mapped)."""

    def __init__(self, arrays: Mapping[str, np.ndarray]) -> None:
        self._arrays = dict(arrays)
        self.names = list(arrays)
        counts = {a.shape[0] if a.ndim else -1 for a in arrays.values()}
        if -1 in counts:
            raise ValueError("every array needs a row axis (its first axis)")
        if len(counts) > 1:
            raise ValueError(f"inputs disagree on the number of rows: {sorted(counts)}")
        self.num_rows = counts.pop() if counts else 0

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        return {name: a[start:stop] for name, a in self._arrays.items()}


class _ParquetSource:
    """A parquet file read one row group at a time, so a large file never sits in memory whole."""

    def __init__(self, parquet_file: Any) -> None:
        self._file = parquet_file
        meta = parquet_file.metadata
        self.names = list(parquet_file.schema_arrow.names)
        self.num_rows = int(meta.num_rows)
        sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        self._starts = [0, *np.cumsum(sizes).tolist()]
        self._cached: tuple[int, dict[str, np.ndarray]] | None = None

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        parts: list[dict[str, np.ndarray]] = []
        group = max(bisect.bisect_right(self._starts, start) - 1, 0)
        while group < len(self._starts) - 1 and self._starts[group] < stop:
            offset = self._starts[group]
            columns = self._group(group)
            lo, hi = max(start - offset, 0), min(stop, self._starts[group + 1]) - offset
            parts.append({name: col[lo:hi] for name, col in columns.items()})
            group += 1
        return {name: np.concatenate([p[name] for p in parts]) for name in self.names}

    def _group(self, group: int) -> dict[str, np.ndarray]:
        # Chunks are usually smaller than a row group: keep the last group rather than re-read it.
        if self._cached is None or self._cached[0] != group:
            table = self._file.read_row_group(group, columns=self.names)
            columns = {name: _arrow_to_numpy(table.column(name)) for name in self.names}
            self._cached = (group, columns)
        return self._cached[1]


def _arrow_to_numpy(column: Any) -> np.ndarray:
    """An arrow column of scalars or (nested) equal-length lists as one n-d array."""
    import pyarrow as pa
    import pyarrow.compute as pc

    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if array.null_count:
        raise ValueError("null cells are not rows")
    kind = array.type
    if not (
        pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
    ):
        return np.asarray(array.to_numpy(zero_copy_only=False))
    lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths != lengths[0]).any():
        raise ValueError("rows are ragged: every row of an input needs the same shape")
    inner = _arrow_to_numpy(array.flatten())
    width = int(lengths[0]) if len(lengths) else 0
    return inner.reshape(len(array), width, *inner.shape[1:])


def _numpy_to_arrow(values: np.ndarray) -> Any:
    """An n-d array as an arrow column of (nested) fixed-size lists, one cell per row."""
    import pyarrow as pa

    flat = pa.array(np.ascontiguousarray(values).reshape(-1))
    for width in reversed(values.shape[1:]):
        flat = pa.FixedSizeListArray.from_arrays(flat, width)
    return flat


def _json_array(rows: Any, name: str) -> np.ndarray:
    if not isinstance(rows, list):
        raise ValueError(f"input {name!r} must be a list of rows")
    try:
        return np.asarray(rows)
    except ValueError as exc:
        raise ValueError(f"rows of input {name!r} are ragged: {exc}") from exc


def _single(input_names: Sequence[str], what: str) -> str:
    if len(input_names) != 1:
        raise ValueError(
            f"{what} holds one input but the model takes {list(input_names)}: "
            "name each input ({name: rows}, or use .npz or .parquet)"
        )
    return input_names[0]


def _load_json(data: bytes, input_names: Sequence[str]) -> _Source:
    doc = json.loads(data)
    if isinstance(doc, dict):
        return _ArraySource({str(k): _json_array(v, str(k)) for k, v in doc.items()})
    name = _single(input_names, "a JSON list of rows")
    return _ArraySource({name: _json_array(doc, name)})


def _load_jsonl(data: bytes, input_names: Sequence[str]) -> _Source:
    lines = [json.loads(line) for line in data.splitlines() if line.strip()]
    if not lines:
        raise ValueError("the file has no rows")
    if all(isinstance(line, dict) for line in lines):
        names = list(lines[0])
        if any(list(line) != names for line in lines):
            raise ValueError("every line needs the same input names")
        return _ArraySource({n: _json_array([line[n] for line in lines], n) for n in names})
    if any(isinstance(line, dict) for line in lines):
        raise ValueError("lines mix {name: value} objects and bare rows")
    name = _single(input_names, "a line with a bare row")
    return _ArraySource({name: _json_array(lines, name)})


def _load_npz(data: IO[bytes] | str) -> _Source:
    # Members of a zip cannot be memory-mapped; load each once so chunks do not re-inflate it.
    with np.load(data, allow_pickle=False) as archive:
        return _ArraySource({name: archive[name] for name in archive.files})


def _load_npy(data: IO[bytes] | str, input_names: Sequence[str]) -> _Source:
    name = _single(input_names, "a .npy file")
    # A local .npy is memory-mapped: chunks page in as they are read, never the whole file.
    mmap_mode: Literal["r"] | None = "r" if isinstance(data, str) else None
    return _ArraySource({name: np.load(data, mmap_mode=mmap_mode, allow_pickle=False)})


def _load(url: str, suffix: str, input_names: Sequence[str]) -> _Source:
    path = local_path(url)
    if path is not None and not os.path.isfile(path):
        raise InvalidRequestError(f"no such file: {url}", field="input_url")
    if path is not None and not os.access(path, os.R_OK):
        raise InvalidRequestError(f"cannot read {url}: permission denied", field="input_url")
    if suffix == ".parquet":
        _, pq = _pyarrow("input_url")
        return _ParquetSource(pq.ParquetFile(path if path is not None else io.BytesIO(_fetch(url))))
    if suffix == ".npy":
        return _load_npy(path if path is not None else io.BytesIO(_fetch(url)), input_names)
    if suffix == ".npz":
        return _load_npz(path if path is not None else io.BytesIO(_fetch(url)))
    data = Path(path).read_bytes() if path is not None else _fetch(url)
    return _load_json(data, input_names) if suffix == ".json" else _load_jsonl(data, input_names)


def _fetch(url: str) -> bytes:
    """A remote file's bytes through fsspec (s3://, gs://, memory://, ...)."""
    import fsspec

    with fsspec.open(url, "rb") as f:
        data: bytes = f.read()
    return data


class RowFile:
    """A file of rows: each input name -> an array whose first axis is the row.

    Attributes:
        url: Where the file is.
        num_rows: How many rows it holds.
    """

    def __init__(self, url: str, source: _Source, dtypes: Mapping[str, np.dtype[Any]]) -> None:
        self.url = url
        self.num_rows = source.num_rows
        self._source = source
        self._dtypes = dict(dtypes)

    @classmethod
    def open(
        cls, url: str, input_names: Sequence[str], dtypes: Mapping[str, np.dtype[Any]]
    ) -> RowFile:
        """Open a row file and check it against the model's inputs.

        Args:
            url: A local path, a ``file://`` URL or any other fsspec URL (read whole into memory).
            input_names: The model's input names, in order.
            dtypes: Each input's dtype; the file's values must convert to it (same kind or safe).

        Returns:
            The open file.

        Raises:
            InvalidRequestError: (field ``input_url``) a missing or unreadable file, an unknown
                suffix, names that are not the model's inputs, disagreeing row counts, ragged
                rows, no rows, or values that do not convert to the input's dtype.
            UnsupportedError: a ``.parquet`` file without pyarrow installed.
        """
        suffix = suffix_of(url)
        if suffix not in FORMATS:
            raise InvalidRequestError(
                f"unknown row file format {suffix or '(no suffix)'!r}: use one of {FORMATS}",
                field="input_url",
            )
        try:
            rows = cls(url, _load(url, suffix, input_names), dtypes)
            rows._check(input_names)
        except (ValueError, OSError, KeyError, zipfile.BadZipFile) as exc:
            if isinstance(exc, InvalidRequestError):
                raise
            raise InvalidRequestError(f"cannot read {url}: {exc}", field="input_url") from exc
        return rows

    def _check(self, input_names: Sequence[str]) -> None:
        names = self._source.names
        if sorted(names) != sorted(input_names):
            raise ValueError(f"the file holds inputs {names}, the model takes {list(input_names)}")
        if self.num_rows == 0:
            raise ValueError("the file has no rows")
        for name, values in self._source.read(0, 1).items():
            target = self._dtypes.get(name)
            if target is not None and not np.can_cast(values.dtype, target, casting="same_kind"):
                raise ValueError(f"input {name!r} holds {values.dtype}, which is not {target}")

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Rows ``start:stop`` of every input, converted to the input's dtype (a fresh copy).

        Raises:
            InvalidRequestError: (field ``input_url``) ragged or null rows found in this range.
        """
        try:
            raw = self._source.read(start, stop)
        except ValueError as exc:
            raise InvalidRequestError(f"cannot read {self.url}: {exc}", field="input_url") from exc
        return {name: np.array(a, dtype=self._dtypes.get(name, a.dtype)) for name, a in raw.items()}

    def close(self) -> None:
        """Let go of the file (memory maps and parquet readers are dropped)."""
        self._source = _ArraySource({})

    def __enter__(self) -> RowFile:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object]) -> None:
    """Write a file so that it either exists whole under ``path`` or not at all.

    The bytes go to a temporary file in the same directory (so the rename stays on one file
    system), are fsynced, renamed over ``path``, and the directory is fsynced so the rename itself
    survives a power cut.
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _writer(suffix: str, columns: Mapping[str, np.ndarray]) -> Callable[[IO[bytes]], object]:
    if suffix == ".npy":
        (values,) = columns.values()
        return lambda f: np.save(f, values, allow_pickle=False)
    if suffix == ".npz":
        return lambda f: save_npz(f, columns)
    if suffix == ".json":
        doc = {name: a.tolist() for name, a in columns.items()}
        return lambda f: f.write(json.dumps(doc).encode())
    if suffix == ".jsonl":
        return lambda f: _write_jsonl(f, columns)
    pa, pq = _pyarrow("output_url")
    table = pa.table({name: _numpy_to_arrow(a) for name, a in columns.items()})
    return lambda f: pq.write_table(table, f)


def save_npz(f: IO[bytes], arrays: Mapping[str, np.ndarray]) -> None:
    """Write arrays as an (uncompressed) .npz, readable by ``np.load``.

    ``np.savez(f, **arrays)`` would break on an output named ``file`` or ``allow_pickle``.
    """
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, values in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(values), allow_pickle=False)


def _write_jsonl(f: IO[bytes], columns: Mapping[str, np.ndarray]) -> None:
    lists = {name: a.tolist() for name, a in columns.items()}
    for i in range(len(next(iter(lists.values())))):
        f.write(json.dumps({name: rows[i] for name, rows in lists.items()}).encode() + b"\n")


def check_output(path: str, num_outputs: int | None = None) -> str:
    """The local path a result file can be written to, checked before any work is done.

    Raises:
        InvalidRequestError: (field ``output_url``) a remote URL, an unknown suffix, a ``.npy``
            for several outputs, or a directory that does not exist or cannot be written.
        UnsupportedError: a ``.parquet`` output without pyarrow installed.
    """
    local = local_path(path)
    if local is None:
        raise InvalidRequestError(f"results are written locally, not to {path}", field="output_url")
    suffix = suffix_of(local)
    if suffix not in FORMATS:
        raise InvalidRequestError(
            f"unknown output format {suffix or '(no suffix)'!r}: use one of {FORMATS}",
            field="output_url",
        )
    if suffix in _SINGLE_ARRAY and num_outputs is not None and num_outputs != 1:
        raise InvalidRequestError(
            f"a {suffix} file holds one array but there are {num_outputs} outputs: use .npz",
            field="output_url",
        )
    if suffix == ".parquet":
        _pyarrow("output_url")
    parent = Path(local).resolve().parent
    if Path(local).is_dir() or not parent.is_dir() or not os.access(parent, os.W_OK):
        raise InvalidRequestError(f"cannot write {path}", field="output_url")
    return local


def write_rows(path: str | os.PathLike[str], columns: Mapping[str, np.ndarray]) -> None:
    """Write named columns of rows atomically, in the format of ``path``'s suffix.

    Args:
        path: A local path or ``file://`` URL ending in one of :data:`FORMATS`.
        columns: Each output name -> an array whose first axis is the row.

    Raises:
        InvalidRequestError: (field ``output_url``) an unknown suffix, a ``.npy`` path for several
            columns, no columns, or columns that disagree on the number of rows.
        UnsupportedError: a ``.parquet`` path without pyarrow installed.
    """
    local = check_output(os.fspath(path), len(columns))
    arrays = {name: np.asarray(a) for name, a in columns.items()}
    counts = {a.shape[0] if a.ndim else -1 for a in arrays.values()}
    if len(counts) != 1 or -1 in counts:
        raise InvalidRequestError(
            "columns need a row axis and the same number of rows", field="output_url"
        )
    atomic_write(local, _writer(suffix_of(local), arrays))


def default_output_path(input_path: str, num_outputs: int = 1) -> str:
    """Where results go when no output is named: beside the input, ``rows.npy -> rows.out.npy``.

    The format is the input's, except that a single-array format (``.npy``) becomes ``.npz`` when
    there are several outputs to hold.
    """
    suffix = suffix_of(input_path)
    stem = input_path[: len(input_path) - len(suffix)] if suffix else input_path
    if suffix in _SINGLE_ARRAY and num_outputs > 1:
        suffix = ".npz"
    return f"{stem}.out{suffix}"
