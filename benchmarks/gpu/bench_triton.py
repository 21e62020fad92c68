"""Time phi_engine's Triton kernels on a GPU: against the device's copy bandwidth, and against
PyTorch eager on the same inputs.

The memory-bound kernels (softmax, layer norm) are read once and written once, so their floor is
bytes moved / copy bandwidth (a large ``Tensor.copy_``, bytes read plus written); the issue's
target is at least 80 % of it. The GEMM with its epilogue and attention are compared with what
PyTorch runs for the same result (``gelu(a @ b + bias)``, ``scaled_dot_product_attention``).
Each timing is the median of 20 runs after 5 warm-up runs, by CUDA events; each result is
checked against PyTorch first.

Usage: python benchmarks/gpu/bench_triton.py [--out DIR]   (writes bench_triton.md there)
"""

from __future__ import annotations

import argparse
import functools
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import phi_engine.kernels as K


def timed(fn: Callable[[], Any], repeats: int = 20, warmup: int = 5) -> float:
    """Median milliseconds of ``fn`` on the current stream."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth() -> float:
    """Bytes per second of a large device-to-device copy (read plus write)."""
    x = torch.empty(1 << 28, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    ms = timed(lambda: y.copy_(x))
    return 2 * x.numel() / (ms / 1e3)


def check(got: torch.Tensor, want: torch.Tensor, tol: float) -> None:
    err = (got.float() - want.float()).norm() / want.float().norm().clamp_min(1e-30)
    if not err < tol:
        raise SystemExit(f"result differs from PyTorch: relative L2 {err:.2e} > {tol}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("build/gpu-check"))
    args = p.parse_args()
    torch.manual_seed(0)
    bw = copy_bandwidth()
    rows: list[list[str]] = []

    def row(name: str, ours: Callable[[], Any], theirs: Callable[[], Any], nbytes: int = 0) -> None:
        ms, ref_ms = timed(ours), timed(theirs)
        floor = f"{nbytes / bw * 1e3 / ms:.0%}" if nbytes else "—"
        rows.append([name, f"{ms:.3f}", f"{ref_ms:.3f}", f"{ref_ms / ms:.2f}", floor])

    ln = torch.nn.functional.layer_norm
    for dtype in (torch.float32, torch.float16):
        x = torch.randn(8192, 4096, device="cuda", dtype=dtype)
        g = torch.randn(4096, device="cuda", dtype=dtype)
        b = torch.randn(4096, device="cuda", dtype=dtype)
        nbytes = 2 * x.numel() * x.element_size()
        check(K.softmax(x), torch.softmax(x.float(), -1), 1e-2)
        row(
            f"softmax 8192x4096 {dtype}",
            functools.partial(K.softmax, x),
            functools.partial(torch.softmax, x, -1),
            nbytes,
        )
        check(K.layer_norm(x, g, b), ln(x.float(), (4096,), g.float(), b.float()), 1e-2)
        row(
            f"layer_norm 8192x4096 {dtype}",
            functools.partial(K.layer_norm, x, g, b),
            functools.partial(ln, x, (4096,), g, b),
            nbytes,
        )
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
    w = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
    bias = torch.randn(4096, device="cuda", dtype=torch.float16)
    gelu = torch.nn.functional.gelu
    check(K.gemm(a, w, bias, "gelu"), gelu(a.float() @ w.float() + bias.float()), 2e-2)
    ms, ref_ms = timed(lambda: K.gemm(a, w, bias, "gelu")), timed(lambda: gelu(a @ w + bias))
    rows.append(
        ["gemm+bias+gelu 4096^3 fp16", f"{ms:.3f}", f"{ref_ms:.3f}", f"{ref_ms / ms:.2f}", "—"]
    )
    q, k, v = (torch.randn(32 * 12, 128, 64, device="cuda", dtype=torch.float16) for _ in range(3))
    sdpa = torch.nn.functional.scaled_dot_product_attention
    check(K.attention(q, k, v), sdpa(q.float(), k.float(), v.float()), 2e-2)
    ms, ref_ms = timed(lambda: K.attention(q, k, v)), timed(lambda: sdpa(q, k, v))
    rows.append(
        ["attention 384x128x64 fp16", f"{ms:.3f}", f"{ref_ms:.3f}", f"{ref_ms / ms:.2f}", "—"]
    )

    head = "| kernel | phi ms | torch ms | torch/phi | of copy floor |\n|---|---|---|---|---|\n"
    text = (
        f"{torch.cuda.get_device_name()}: copy bandwidth {bw / 1e9:.0f} GB/s\n\n"
        + head
        + "\n".join("| " + " | ".join(r) + " |" for r in rows)
        + "\n"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_triton.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
