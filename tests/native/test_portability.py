"""The same build runs on an x86-64 CPU without AVX: emulated with qemu (user mode, Nehalem).

Hot loops have AVX-512, AVX2 and baseline clones chosen at load time, and OpenBLAS picks its
kernels at run time; an illegal instruction on an older CPU would be a bug. CI installs
qemu-user; elsewhere the test skips when qemu-x86_64 is not on PATH.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import functools
    import numpy as np
    from phi_engine import ops
    from phi_engine._native import core
    from phi_engine.runtime import reference as ref

    assert not core.cpu_features()["avx2"], "the emulated CPU must not report AVX2"
    close = functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-4)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((37, 29), dtype=np.float32)
    b = rng.standard_normal((29, 41), dtype=np.float32)
    bias = rng.standard_normal(41, dtype=np.float32)
    for act in ("gelu", "tanh", "sigmoid"):
        close(ops.gemm(a, b, bias, act), ref.gemm(a, b, bias, act))
    x = rng.standard_normal((5, 7, 33), dtype=np.float32)
    g = rng.standard_normal(33, dtype=np.float32)
    close(ops.softmax(x), ref.softmax(x))
    close(ops.layer_norm(x, g), ref.layer_norm(x, g))
    close(ops.add(x, x[0], "gelu"), ref.add(x, x[0], "gelu"))
    close(ops.reduce_sum(x, [2]), ref.reduce_sum(x, [2]))
    img = rng.standard_normal((1, 3, 9, 9), dtype=np.float32)
    w = rng.standard_normal((4, 3, 3, 3), dtype=np.float32)
    close(ops.conv2d(img, w, pads=1), ref.conv2d(img, w, pads=1))
    assert core.measure_fma_peak(1, 0.02) > 0
    print("ok")
    """
)


@pytest.mark.skipif(platform.machine() != "x86_64", reason="emulates an older x86-64 CPU")
@pytest.mark.skipif(
    shutil.which("qemu-x86_64") is None, reason="qemu-x86_64 (Debian: qemu-user) is not installed"
)
def test_runs_on_a_cpu_without_avx() -> None:
    result = subprocess.run(
        ["qemu-x86_64", "-cpu", "Nehalem", sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")
