"""Text ops: TfIdfVectorizer, StringConcat, StringSplit, StringNormalizer and RegexFullMatch.

TfIdfVectorizer reads n-grams along the last axis of each row with every skip distance from 1 to
``max_skip_count + 1`` (the n items at ``i, i + d, ..., i + (n - 1) d``); unigrams do not depend
on the distance and count once. Only pool n-grams whose length lies in
``[min_gram_length, max_gram_length]`` count (TfIdfVectorizer-9, as ONNX Runtime reads it).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from phi_engine.errors import UnsupportedError
from phi_engine.graph.ir import Dim, TensorType
from phi_engine.graph.ops._nn_util import fresh
from phi_engine.graph.ops._util import broadcast, tt
from phi_engine.graph.registry import InferContext, OpContext, op

_MODES = ("TF", "IDF", "TFIDF")
Gram = tuple[Any, ...]


def _pool(ctx: OpContext) -> list[Any]:
    ints, strings = ctx.attr("pool_int64s", None), ctx.attr("pool_strings", None)
    if (ints is None) == (strings is None):
        ctx.fail("exactly one of pool_int64s and pool_strings must be given")
    return [int(v) for v in ints] if ints is not None else [str(v) for v in strings]


def _vocabulary(ctx: OpContext) -> tuple[dict[Gram, int], int, int, int]:
    """(n-gram -> output column, min length, max length, output size)."""
    pool = _pool(ctx)
    starts = [int(v) for v in ctx.attr("ngram_counts")]
    columns = [int(v) for v in ctx.attr("ngram_indexes")]
    low, high = int(ctx.attr("min_gram_length")), int(ctx.attr("max_gram_length"))
    if not 1 <= low <= high:
        ctx.fail(f"min_gram_length {low} and max_gram_length {high} must satisfy 1 <= min <= max")
    if not columns or min(columns) < 0:
        ctx.fail("ngram_indexes must be non-empty and non-negative")
    if str(ctx.attr("mode")) not in _MODES:
        ctx.fail(f"mode {ctx.attr('mode')!r} is not one of {list(_MODES)}")
    vocabulary: dict[Gram, int] = {}
    gram_id = 0
    for n, start in enumerate(starts, start=1):
        end = starts[n] if n < len(starts) else len(pool)
        if start < 0 or end < start or end > len(pool) or (end - start) % n:
            ctx.fail(f"ngram_counts {starts} do not split the pool of {len(pool)} items")
        for i in range(start, end, n):
            if gram_id >= len(columns):
                ctx.fail(f"ngram_indexes has {len(columns)} entries, the pool more n-grams")
            if low <= n <= high:
                vocabulary[tuple(pool[i : i + n])] = columns[gram_id]
            gram_id += 1
    return vocabulary, low, high, max(columns) + 1


def _counts(
    row: Sequence[Any],
    vocabulary: dict[Gram, int],
    low: int,
    high: int,
    skips: int,
    out: np.ndarray,
) -> None:
    first = low
    for distance in range(1, skips + 2):
        for start in range(len(row)):
            for n in range(first, high + 1):
                last = start + (n - 1) * distance
                if last >= len(row):
                    break
                column = vocabulary.get(tuple(row[start : last + 1 : distance]))
                if column is not None:
                    out[column] += 1
        if first == 1:  # unigrams do not depend on the distance: count them once
            first = 2
            if first > high:
                break


def _tfidf_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.type(0)
    if x.dtype.name not in ("int32", "int64", "object"):
        ctx.fail(f"X must be a string, int32 or int64 tensor, got {x.dtype.name}")
    _, _, _, size = _vocabulary(ctx)
    if x.shape is not None and len(x.shape) not in (1, 2):
        ctx.fail(f"X must be [N] or [B, N], got shape {list(x.shape)}")
    if x.shape is None:
        return [tt(np.float32, None)]
    rows: tuple[Dim, ...] = () if len(x.shape) == 1 else (x.shape[0],)
    return [tt(np.float32, (*rows, size))]


def _item(v: Any) -> Any:
    return v.decode() if isinstance(v, bytes) else (str(v) if isinstance(v, str) else int(v))


@op("TfIdfVectorizer", (9,), infer=_tfidf_infer)
def tfidf_vectorizer(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    data = x[0]
    vocabulary, low, high, size = _vocabulary(ctx)
    skips = int(ctx.attr("max_skip_count", 0))
    if data.ndim not in (1, 2) or skips < 0:
        ctx.fail(f"X must be [N] or [B, N] (got {list(data.shape)}) and max_skip_count >= 0")
    rows = data.reshape(1, -1) if data.ndim == 1 else data
    counts = np.zeros((rows.shape[0], size), np.float64)
    for r in range(rows.shape[0]):
        _counts([_item(v) for v in rows[r]], vocabulary, low, high, skips, counts[r])
    weights = ctx.attr("weights", None)
    w = np.asarray(weights, np.float64) if weights else np.ones(size)
    if w.size != size:
        ctx.fail(f"weights has {w.size} values for {size} output columns")
    mode = str(ctx.attr("mode"))
    if mode == "IDF":
        counts = (counts > 0) * w
    elif mode == "TFIDF":
        counts = counts * w
    y = counts.astype(np.float32)
    return [y.reshape(size) if data.ndim == 1 else y]


# ---- string ops ------------------------------------------------------------------------------

STRING = np.dtype(object)


def _text(v: Any) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def _strings(x: np.ndarray) -> np.ndarray:
    """An object array of Python ``str`` of the same shape."""
    out = np.empty(x.shape, STRING)
    out.reshape(-1)[:] = [_text(v) for v in x.reshape(-1)]
    return out


def _check_strings(ctx: InferContext, *indices: int) -> None:
    for i in indices:
        if ctx.type(i).dtype != STRING:
            ctx.fail(f"input {i} must be a string tensor, got {ctx.type(i).dtype.name}")


def _string_concat_infer(ctx: InferContext) -> list[TensorType]:
    _check_strings(ctx, 0, 1)
    return [tt(STRING, broadcast(ctx, ctx.type(0).shape, ctx.type(1).shape))]


@op("StringConcat", (20,), infer=_string_concat_infer)
def string_concat(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    a, b = np.broadcast_arrays(_strings(x[0]), _strings(x[1]))
    out = np.empty(a.shape, STRING)
    out.reshape(-1)[:] = [p + q for p, q in zip(a.reshape(-1), b.reshape(-1), strict=True)]
    return [out]


def _pattern(ctx: OpContext) -> re.Pattern[str]:
    pattern = str(ctx.attr("pattern"))
    try:
        return re.compile(pattern)
    except re.error as exc:  # RE2 syntax Python's re lacks, or an invalid pattern
        failed: re.Pattern[str] = ctx.fail(f"pattern {pattern!r}: {exc}", UnsupportedError)
        return failed


def _regex_infer(ctx: InferContext) -> list[TensorType]:
    _check_strings(ctx, 0)
    _pattern(ctx)
    return [tt(np.bool_, ctx.type(0).shape)]


@op("RegexFullMatch", (20,), infer=_regex_infer)
def regex_full_match(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    """Whether each string fully matches ``pattern`` (RE2 syntax, which Python's ``re`` reads
    for everything but the few RE2-only constructs, refused at compile time)."""
    pattern = _pattern(ctx)
    flat = [pattern.fullmatch(_text(v)) is not None for v in x[0].reshape(-1)]
    return [np.array(flat, dtype=np.bool_).reshape(x[0].shape)]


def _split_infer(ctx: InferContext) -> list[TensorType]:
    _check_strings(ctx, 0)
    shape = ctx.type(0).shape
    if shape is None:
        return [tt(STRING, None), tt(np.int64, None)]
    return [tt(STRING, (*shape, fresh(ctx, "parts"))), tt(np.int64, shape)]


@op("StringSplit", (20,), infer=_split_infer)
def string_split(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    """``str.split`` of every element: on ``delimiter`` (consecutive ones delimit empty
    strings), or on runs of whitespace when it is unset or empty; at most ``maxsplit``
    splits. Rows are padded with empty strings to the longest."""
    data = x[0]
    delimiter = ctx.attr("delimiter", None) or None
    maxsplit = ctx.attr("maxsplit", None)
    limit = -1 if maxsplit is None else int(maxsplit)
    parts = [_text(v).split(delimiter, limit) for v in data.reshape(-1)]
    width = max((len(p) for p in parts), default=0)
    out = np.full((len(parts), width), "", STRING)
    for i, p in enumerate(parts):
        out[i, : len(p)] = p
    counts = np.array([len(p) for p in parts], np.int64).reshape(data.shape)
    return [out.reshape(*data.shape, width), counts]


def _normalizer_infer(ctx: InferContext) -> list[TensorType]:
    _check_strings(ctx, 0)
    _case_action(ctx)
    shape = ctx.type(0).shape
    if shape is not None and not (len(shape) == 1 or (len(shape) == 2 and shape[0] == 1)):
        ctx.fail(f"X must be [C] or [1, C], got {list(shape)}")
    if shape is None:
        return [tt(STRING, None)]
    return [tt(STRING, (*shape[:-1], fresh(ctx, "kept")))]


def _case_action(ctx: OpContext) -> str:
    action = str(ctx.attr("case_change_action", "NONE"))
    if action not in ("LOWER", "UPPER", "NONE"):
        ctx.fail(f"case_change_action {action!r} is not LOWER, UPPER or NONE")
    return action


@op("StringNormalizer", (10,), infer=_normalizer_infer)
def string_normalizer(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    """Drop the stop words (compared case-insensitively unless ``is_case_sensitive``), then
    change case; an input with nothing left gives one empty string (StringNormalizer-10)."""
    data = x[0]
    if not (data.ndim == 1 or (data.ndim == 2 and data.shape[0] == 1)):
        ctx.fail(f"X must be [C] or [1, C], got {list(data.shape)}")
    sensitive = bool(ctx.attr("is_case_sensitive", 0))
    stop = {w if sensitive else w.lower() for w in map(str, ctx.attr("stopwords", None) or [])}
    words = [_text(v) for v in data.reshape(-1)]
    kept = [w for w in words if (w if sensitive else w.lower()) not in stop]
    action = _case_action(ctx)
    if action == "LOWER":
        kept = [w.lower() for w in kept]
    elif action == "UPPER":
        kept = [w.upper() for w in kept]
    out = np.array(kept or [""], dtype=STRING)
    return [out.reshape(1, -1) if data.ndim == 2 else out]
