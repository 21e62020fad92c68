"""The native core compiles for aarch64 (a cross-compiler check; the x86 clones must not leak).

CI installs Debian's g++-aarch64-linux-gnu; elsewhere the test skips when it is not on PATH.
Only csrc/core is compiled: it is plain C++ with no Python headers, by design.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
CXX = "aarch64-linux-gnu-g++"


def _openblas_include() -> str:
    import scipy_openblas32

    return str(scipy_openblas32.get_include_dir())


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which(CXX) is None, reason=f"{CXX} (Debian: g++-aarch64-linux-gnu) is not installed"
)
def test_core_compiles_for_aarch64(tmp_path: pathlib.Path) -> None:
    sources = sorted((ROOT / "csrc" / "core").rglob("*.cpp"))
    assert sources, "no core sources found"
    flags = [
        "-std=c++20",
        "-O1",
        "-fopenmp-simd",
        "-fno-math-errno",
        "-Werror=implicit-function-declaration",
    ]
    include = ["-I", str(ROOT / "csrc"), "-I", _openblas_include()]

    def compile_one(src: pathlib.Path) -> tuple[str, int, str]:
        cmd = [CXX, *flags, *include, "-c", str(src), "-o", str(tmp_path / (src.stem + ".o"))]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        return src.name, proc.returncode, proc.stderr

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        failures = [(n, err) for n, rc, err in pool.map(compile_one, sources) if rc != 0]
    assert not failures, "\n".join(f"{n}:\n{err[-2000:]}" for n, err in failures)
