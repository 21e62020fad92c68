"""Runtime facts and settings of the native core."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import phi_engine as phi
from phi_engine import errors
from phi_engine._native import core


def test_devices_lists_the_cpu() -> None:
    cpu = phi.devices()[0]
    assert cpu["kind"] == "cpu"
    assert cpu["cores"] >= 1
    assert "OpenBLAS" in cpu["blas"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts threads in /proc")
def test_loading_the_core_starts_no_blas_threads() -> None:
    """The core's OpenBLAS runs single-threaded inside our pool: loading it must start no pthread
    pool of its own (one would spin a core at start-up), and numpy's BLAS must keep its threads."""
    script = """
import os, numpy
from threadpoolctl import threadpool_info
def threads(): return len(os.listdir("/proc/self/task"))
numpy_blas = {i["filepath"]: i["num_threads"] for i in threadpool_info()}
before = threads()
import phi_engine._native as native
assert native.HAS_NATIVE
after = threads()
ours = [i for i in threadpool_info() if i["filepath"] not in numpy_blas]
print(before, after, [i["num_threads"] for i in ours], os.environ.get("OPENBLAS_NUM_THREADS"))
for i in threadpool_info():
    if i["filepath"] in numpy_blas:
        assert i["num_threads"] == numpy_blas[i["filepath"]], i
"""
    env = {k: v for k, v in os.environ.items() if not k.endswith("NUM_THREADS")}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    before, after, ours, setting = out.stdout.split(maxsplit=3)
    assert after == before  # the core's thread pool starts lazily, and OpenBLAS's never
    assert ours == "[1]"
    assert setting.strip() == "None"  # the process's environment is left as it was


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


_PLACEMENT_CHILD = """
import os, sys, time
from phi_engine._native import core
core.pool_placement_probe(2, 1.0)
distinct = 0
for _ in range(10):
    time.sleep(0.1)  # the helper stops spinning and sleeps; the OS alone often wakes it beside us
    caller, helper = core.pool_placement_probe(2, 2.0)
    assert caller[0] >= 0 and helper[0] >= 0, (caller, helper)
    distinct += caller[0] != helper[0]
masks = set()
for tid in os.listdir("/proc/self/task"):
    with open(f"/proc/self/task/{tid}/status") as f:
        masks |= {line.split()[1] for line in f if line.startswith("Cpus_allowed_list")}
print(distinct, " ".join(sorted(masks)))
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or len(os.sched_getaffinity(0)) < 2,
    reason="placement is Linux-only and needs two CPUs",
)
@pytest.mark.parametrize("spread", ["1", "0"])
def test_a_two_thread_call_runs_on_two_cpus_and_pins_nothing(spread: str) -> None:
    """After idling, the pool's helper is woken on a CPU its caller does not run on (the OS alone
    often wakes it on the caller's CPU, halving the call's speed), and no thread stays pinned."""
    env = dict(os.environ, PHI_ENGINE_SPREAD=spread)
    out = subprocess.run(
        [sys.executable, "-c", _PLACEMENT_CHILD],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    distinct, masks = out.stdout.split(maxsplit=1)
    with open("/proc/self/status") as f:
        ours = {line.split()[1] for line in f if line.startswith("Cpus_allowed_list")}
    assert masks.split() == sorted(ours)  # every thread of the child keeps the process's mask
    if spread == "1":
        assert int(distinct) >= 9
