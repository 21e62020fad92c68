"""The native request-body decoder against json.loads + numpy.asarray (the reference it replaces):
same values, number arrays as the arrays numpy would make, and every invalid document refused."""

from __future__ import annotations

import json
import math
import random
import struct
from decimal import Decimal
from typing import Any

import numpy as np
import pytest

from phi_engine._native import require_core

loads = require_core().json_loads


def same(got: Any, ref: Any) -> None:
    """``got`` (decoder) is ``ref`` (json.loads) with number arrays as numpy makes them."""
    if isinstance(got, np.ndarray):
        want = np.asarray(ref)
        assert got.dtype == want.dtype and got.shape == want.shape
        assert np.array_equal(got.view(np.uint8), want.view(np.uint8)), "bit-exact values"
    elif isinstance(got, dict):
        assert type(ref) is dict and list(got) == list(ref)
        for k in got:
            same(got[k], ref[k])
    elif isinstance(got, list):
        assert type(ref) is list and len(got) == len(ref)
        for a, b in zip(got, ref, strict=True):
            same(a, b)
    else:
        assert type(got) is type(ref)
        if isinstance(got, float):
            assert struct.pack("d", got) == struct.pack("d", ref)
        else:
            assert got == ref


def random_float(rng: random.Random) -> float:
    while True:
        k = rng.random()
        if k < 0.25:
            v = rng.random()
        elif k < 0.45:
            v = rng.uniform(-1e6, 1e6)
        elif k < 0.65:
            v = struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0]
        elif k < 0.85:
            v = float(np.float32(rng.gauss(0, 1)))
        else:
            v = rng.randint(-(10**6), 10**6) / 10 ** rng.randint(0, 25)
        if math.isfinite(v):
            return v


def test_numbers_are_bit_exact_in_every_spelling() -> None:
    rng = random.Random(0)
    values = [random_float(rng) for _ in range(60_000)]
    texts = [repr(v) for v in values]
    texts += [f"{v:.3e}" for v in values[:5000]] + [f"{v:.19g}" for v in values[:10000]]
    texts += [f"{v:.25f}" for v in values[:2000] if abs(v) < 1e10]
    for v in values[:3000]:  # decimal strings next to (and on) halfway points between doubles
        if v and 1e-300 < abs(v) < 1e300:
            mid = (Decimal(v) + Decimal(float(np.nextafter(v, math.inf)))) / 2
            texts += [format(mid, ".18e"), format(mid, "e")]
    texts += ["1e22", "1e23", "-0.0", "0e-400", "4.9e-324", "1.7976931348623157e308", "1e400"]
    texts += ["2.2250738585072011e-308", "18446744073709551615e-5", "9999999999999999999e27"]
    texts = [t if any(c in t for c in ".eE") else t + ".0" for t in texts]
    got = loads(("[" + ",".join(texts) + "]").encode())
    want = np.array([float(t) for t in texts])
    assert got.dtype == np.float64
    bad = np.nonzero(got.view(np.uint64) != want.view(np.uint64))[0]
    assert not len(bad), [texts[i] for i in bad[:5]]
    for t in texts[:3000]:  # a lone number is a Python float with the same bits
        same(loads(t.encode()), json.loads(t))


def test_integers_become_int64_arrays_only_when_numpy_would() -> None:
    rng = random.Random(1)
    ints = [rng.randint(-(2**63), 2**63 - 1) for _ in range(5000)] + [2**63 - 1, -(2**63), 0]
    got = loads(json.dumps(ints).encode())
    assert got.dtype == np.int64 and got.tolist() == ints
    for big in ([2**63], [-(2**63) - 1], [10**19 - 1], [12345678901234567890123]):
        out = loads(json.dumps(big).encode())
        assert type(out) is list and out == big, "ints int64 cannot hold stay Python ints"
    assert loads(b"[1, 2.5]").dtype == np.float64  # mixed: float64, the ints exactly
    assert type(loads(json.dumps([0.5, 2**64]).encode())) is list  # numpy: an object array
    assert loads(b"-0") == 0 and loads(str(10**30).encode()) == 10**30


@pytest.mark.parametrize(
    "doc",
    [
        '{"a": [[1.5, 2, 3e2], [4, 5, -6.25]], "b": "x\\u00e9\\ud83d\\ude00\\n\\/", "c": [1, "a"]}',
        '{"d": [], "e": [[1], [2, 3]], "f": true, "g": null, "h": [[[]]], "i": [true, 1]}',
        "[[[1, 2], [3, 4]], [[5, 6], [7, 8]]]",
        "[[1, [2]]]",
        '  {"x" : 1 , "x": 2}  ',
        '"plain"',
        '{"deployment_id": "dep_1", "input": {"data": [[0.1, 0.2]]}, "priority": "high"}',
        '[{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]',
        # arrays whose first element is not a number (decoded without the numeric attempt),
        # after whitespace, and ones that start numeric and then are not
        '[ "a", 1]',
        '[\n\t{"a": [1]}, [2]]',
        "[ ]",
        "[null, 1]",
        '[-1, "x"]',
        '[[1], {"a": 2}]',
    ],
)
def test_documents_decode_like_json_loads(doc: str) -> None:
    same(loads(doc.encode()), json.loads(doc))


def test_random_documents_decode_like_json_loads() -> None:
    rng = random.Random(2)

    def value(depth: int) -> Any:
        k = rng.random()
        if depth > 4 or k < 0.3:
            return rng.choice(
                [random_float(rng), rng.randint(-(10**20), 10**20), 's\u00e9"\\', True, None]
            )
        if k < 0.55:
            shape = [rng.randint(1, 3) for _ in range(rng.randint(1, 3))]
            return (
                np.asarray([random_float(rng) for _ in range(math.prod(shape))])
                .reshape(shape)
                .tolist()
            )
        if k < 0.8:
            return [value(depth + 1) for _ in range(rng.randint(0, 4))]
        return {f"k{i}\u2603": value(depth + 1) for i in range(rng.randint(0, 4))}

    for _ in range(300):
        doc = json.dumps(value(0), ensure_ascii=rng.random() < 0.5)
        same(loads(doc.encode()), json.loads(doc))


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"[1,]",
        b'{"a":1,}',
        b"[01]",
        b"[1.]",
        b"[-]",
        b"[.5]",
        b'"\x01"',
        b'"\\x"',
        b"[1] x",
        b'{"a" 1}',
        b"nul",
        b"[1e]",
        b"\xff",
        b'"\xff"',
        b"{1: 2}",
        b"[1 2]",
        b'"abc',
        b"[",
        b"{",
    ],
)
def test_invalid_documents_are_refused_with_value_error(bad: bytes) -> None:
    with pytest.raises(ValueError):
        loads(bad)
    with pytest.raises(ValueError):
        json.loads(bad)


@pytest.mark.parametrize(
    "bad",
    [b'"\\ud800"', b'"\\udc00x"', b"[" * 300 + b"]" * 300, b"NaN", b"[Infinity]", b"-Infinity"],
)
def test_what_rfc_8259_forbids_is_refused_though_json_loads_takes_it(bad: bytes) -> None:
    """Lone surrogates, NaN/Infinity literals and absurd nesting: refused (json.loads accepts
    them; the server then hands such a body to the full route)."""
    json.loads(bad)
    with pytest.raises(ValueError):
        loads(bad)
