"""The CUDA backend on machines without a GPU.

Where nvcc exists, every CUDA source compiles for sm_80 and sm_90, so the kernels cannot rot on
CI machines that never run them (their behaviour is tested in tests/gpu, on a GPU). Wherever the
CUDA module is missing or sees no device, the backend says so with UnsupportedError instead of
crashing, and argument errors still map to phi_engine.errors.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from phi_engine import _native
from phi_engine.errors import InvalidRequestError, UnsupportedError
from phi_engine.runtime import cuda

REPO = Path(__file__).resolve().parents[2]
CUDA_SOURCES = REPO / "csrc" / "cuda"
ARCHITECTURES = ("80", "90")


def _nvcc() -> str | None:
    for candidate in (os.environ.get("CUDACXX"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def _cublas_include(nvcc: str) -> str | None:
    """cuBLAS headers: the toolkit's, else an nvidia-cublas wheel's (as cmake/cuda.cmake looks)."""
    toolkit = Path(nvcc).resolve().parent.parent / "include"
    if (toolkit / "cublas_v2.h").is_file():
        return str(toolkit)
    try:
        nvidia = importlib.import_module("nvidia")
    except ImportError:
        return None
    for root in nvidia.__path__:
        for sub in ("cu13", "cu12", "cublas"):
            include = Path(root) / sub / "include"
            if (include / "cublas_v2.h").is_file():
                return str(include)
    return None


def _compile_command(nvcc: str, source: Path, out_dir: Path) -> list[str] | None:
    include = f"-I{REPO / 'csrc'}"
    obj = str(out_dir / (source.name + ".o"))
    if source.suffix == ".cu":
        gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in ARCHITECTURES]
        return [nvcc, "-std=c++17", "-O3", include, *gencode, "-c", str(source), "-o", obj]
    if source.name == "bind_cuda.cpp":
        # The binding needs pybind11 and Python's headers; where they are missing (pybind11 is a
        # build requirement, absent from a test environment) the package build compiles it.
        python_include = sysconfig.get_paths()["include"]
        if (
            importlib.util.find_spec("pybind11") is None
            or not Path(python_include, "Python.h").is_file()
        ):
            return None
        pybind11_include = importlib.import_module("pybind11").get_include()
        extra = [f"-I{pybind11_include}", f"-I{python_include}"]
    elif source.name == "gemm_cublas.cpp":
        cublas = _cublas_include(nvcc)
        if cublas is None:
            return None  # the build makes gemm_no_cublas.cpp instead, which is compiled here too
        extra = [f"-I{cublas}"]
    else:
        extra = []
    return [nvcc, "-x", "c++", "-std=c++20", "-O1", include, *extra, "-c", str(source), "-o", obj]


@pytest.mark.slow
def test_cuda_sources_compile(tmp_path: Path) -> None:
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("no nvcc on this machine")
    sources = sorted(CUDA_SOURCES.glob("*.cu")) + sorted(CUDA_SOURCES.glob("*.cpp"))
    assert len(sources) >= 8, sources
    commands = [c for c in (_compile_command(nvcc, s, tmp_path) for s in sources) if c is not None]

    def build(command: list[str]) -> tuple[list[str], subprocess.CompletedProcess[str]]:
        return command, subprocess.run(
            command, capture_output=True, text=True, timeout=600, check=False
        )

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        results = list(pool.map(build, commands))
    failures = [
        f"$ {' '.join(cmd)}\n{proc.stderr}" for cmd, proc in results if proc.returncode != 0
    ]
    assert not failures, "\n\n".join(failures)


def test_backend_without_module_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_native, "cuda", None)
    assert not cuda.is_available()
    assert cuda.device_count() == 0
    assert cuda.devices() == []
    x = np.ones((2, 2), np.float32)
    with pytest.raises(UnsupportedError, match=r"\[cuda:gemm\].*_core_cuda"):
        cuda.gemm(x, x)
    with pytest.raises(UnsupportedError, match=r"\[cuda:softmax\]"):
        cuda.softmax(x)


def _module() -> Any:
    if _native.cuda is None:
        pytest.skip("phi_engine._core_cuda is not built here")
    return _native.cuda


def test_module_reports_its_build() -> None:
    cu = _module()
    assert cu.architectures  # e.g. "80,90"
    assert isinstance(cu.has_cublas, bool)
    assert cu.runtime_version() >= 11000


def test_module_without_device_reports_none() -> None:
    cu = _module()
    if cu.device_count() > 0:
        pytest.skip("a CUDA device is present")
    assert cu.device_list() == []
    assert cu.device_status()
    with pytest.raises(UnsupportedError, match=r"\[cuda:alloc\]"):
        cu.DeviceBuffer(16)
    with pytest.raises(UnsupportedError, match=r"\[cuda:layer_norm\] no CUDA device"):
        cuda.layer_norm(np.ones((2, 4), np.float32), np.ones(4, np.float32))


def test_module_argument_errors_map_to_phi_errors() -> None:
    cu = _module()
    # Validation happens before any CUDA call, so these need no device.
    with pytest.raises(InvalidRequestError, match=r"\[cuda:binary\] unknown op"):
        cu.binary("frobnicate", 0, [1], 0, [1], 0, [1])
    with pytest.raises(InvalidRequestError, match=r"\[cuda:add\] shapes do not broadcast"):
        cu.binary("add", 8, [3], 8, [4], 8, [4])
    with pytest.raises(InvalidRequestError, match=r"\[cuda:gemm\] unknown activation"):
        cu.gemm(8, 8, 8, 1, 1, 1, activation="swish")
    with pytest.raises(InvalidRequestError, match=r"\[cuda:softmax\] mask does not broadcast"):
        cu.softmax(8, 8, [2, 3], mask=8, mask_shape=[4])
    with pytest.raises(
        InvalidRequestError, match=r"\[cuda:copy_to_host\] host array must be C-contiguous"
    ):
        cu.copy_to_host(np.ones((4, 4), np.float32)[:, ::2], 8)


def test_gpu_tests_skip_cleanly_without_a_device() -> None:
    if cuda.is_available():
        pytest.skip("a CUDA device is present: tests/gpu runs for real")
    env = {**os.environ, "PHI_ENGINE_REQUIRE_GPU": "0"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(REPO / "tests" / "gpu"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "skipped" in proc.stdout and "passed" not in proc.stdout
