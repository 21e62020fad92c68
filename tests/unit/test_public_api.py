"""The public surface: pinned names, a fast import, the error tree."""

from __future__ import annotations

import subprocess
import sys

import pytest

import phi_engine as phi
from phi_engine import errors


def test_all_is_pinned() -> None:
    assert sorted(phi.__all__) == sorted(
        [
            "CompiledModel",
            "Engine",
            "InferenceResult",
            "__version__",
            "compile",
            "devices",
            "errors",
            "get_num_threads",
            "graph",
            "observability",
            "ops",
            "registry",
            "serving",
            "set_num_threads",
        ]
    )
    for name in phi.__all__:
        assert getattr(phi, name) is not None


def test_import_is_fast_and_lazy() -> None:
    code = (
        "import sys, time; t = time.perf_counter(); import phi_engine; "
        "print(time.perf_counter() - t); "
        "print('numpy' in sys.modules, 'phi_engine._core' in sys.modules)"
    )
    # Best of three fresh interpreters: the first may pay for a cold disk cache.
    runs = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        for _ in range(3)
    ]
    seconds = min(float(r.stdout.split()[0]) for r in runs)
    assert runs[0].stdout.split()[1:] == ["False", "False"], (
        "import phi_engine must not load numpy or the core"
    )
    assert seconds < 0.3


def test_unknown_attribute() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = phi.nope  # type: ignore[attr-defined]


def test_error_tree_and_statuses() -> None:
    expected = {
        errors.InvalidRequestError: 400,
        errors.UnauthorizedError: 401,
        errors.ForbiddenError: 403,
        errors.NotFoundError: 404,
        errors.ConflictError: 409,
        errors.OverloadedError: 503,
        errors.IntegrityError: 400,
        errors.UnsupportedError: 400,
        errors.RateLimitedError: 429,
        errors.ResourceError: 400,
        errors.PhiEngineError: 500,
    }
    for cls, status in expected.items():
        assert issubclass(cls, errors.PhiEngineError)
        assert cls.status == status
    err = errors.InvalidRequestError("bad", field="input")
    assert err.to_dict() == {"code": "invalid_request", "message": "bad", "field": "input"}
    assert errors.OverloadedError("full", reason="queue_full").reason == "queue_full"
