"""Skip logic of the GPU tests.

Tests marked ``gpu`` run only where phi_engine._core_cuda was built and sees a CUDA device; else
they are skipped with the reason. With ``PHI_ENGINE_REQUIRE_GPU=1`` (benchmarks/gpu/check.sh sets
it) a missing module or device stops the run with an error instead, so a GPU machine never
reports a green run of skipped tests.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator

import pytest

from phi_engine import _native
from phi_engine.runtime import cuda


def _unavailable_reason() -> str | None:
    if _native.cuda is None:
        try:
            importlib.import_module("phi_engine._core_cuda")
        except ImportError as exc:
            return f"phi_engine._core_cuda is not built or does not load: {exc}"
        return "phi_engine._core_cuda failed to load"
    if int(_native.cuda.device_count()) == 0:
        return f"no CUDA device: {_native.cuda.device_status()}"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if "gpu" in item.keywords]
    reason = _unavailable_reason() if gpu_items else None
    if reason is None:
        return
    if os.environ.get("PHI_ENGINE_REQUIRE_GPU") == "1":
        pytest.exit(f"PHI_ENGINE_REQUIRE_GPU=1 but {reason}", returncode=3)
    for item in gpu_items:
        item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(autouse=True)
def _poison_outputs(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every output buffer starts as NaN, so an element a kernel never writes fails the test."""
    monkeypatch.setattr(cuda, "_POISON_OUTPUTS", True)
    yield
