"""Runtime facts and settings of the native core."""

from __future__ import annotations

import pytest

import phi_engine as phi
from phi_engine import errors
from phi_engine._native import core


def test_devices_lists_the_cpu() -> None:
    cpu = phi.devices()[0]
    assert cpu["kind"] == "cpu"
    assert cpu["cores"] >= 1
    assert "OpenBLAS" in cpu["blas"]


def test_num_threads_roundtrip_and_validation() -> None:
    before = phi.get_num_threads()
    try:
        phi.set_num_threads(1)
        assert phi.get_num_threads() == 1
    finally:
        phi.set_num_threads(0)
    assert phi.get_num_threads() == before
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(errors.InvalidRequestError, match="threads"):
            phi.set_num_threads(bad)  # type: ignore[arg-type]


def test_fma_peak_is_measured_and_scales() -> None:
    one = core.measure_fma_peak(1, 0.05)
    assert one > 1.0  # GFLOP/s: any CPU this runs on does more than a billion FMAs a second
    features = core.cpu_features()
    assert set(features) >= {"arch", "avx2", "fma"}
