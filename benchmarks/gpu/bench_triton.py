"""Time phi_engine's Triton kernels on a GPU: against the device's copy bandwidth, and against
PyTorch eager on the same inputs.

The memory-bound kernels (softmax, layer norm) are read once and written once, so their floor is
bytes moved / copy bandwidth (a large ``Tensor.copy_``, bytes read plus written); the issue's
target is at least 80 % of it. The GEMM with its epilogue and attention are compared with what
PyTorch runs for the same result (``gelu(a @ b + bias)``, ``scaled_dot_product_attention``).
Each timing is the median of 20 batches of 10 back-to-back launches between CUDA events (so the
host's launch cost overlaps the device's work, as in a running model), after 5 warm-up batches;
each result is checked against PyTorch first. ``--sweep gemm`` also times the GEMM's tile
configurations at 4096³ in each precision (the table behind ``kernels._common.gemm_config``),
``--sweep rows`` the row kernels' warps per row (behind ``kernels._common.row_warps``); ``--only
sweep`` leaves the main table out.

Usage: python benchmarks/gpu/bench_triton.py [--out DIR] [--sweep gemm|rows|all] [--only sweep]
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


def timed(fn: Callable[[], Any], repeats: int = 20, warmup: int = 5, inner: int = 10) -> float:
    """Median milliseconds of one call of ``fn`` on the current stream (``inner`` calls per
    timed batch)."""
    for _ in range(warmup * inner):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / inner)
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


ROWS = 16384
"""Rows of the softmax and layer-norm inputs: 16384 x 4096 float32 is 256 MiB, well past L2."""

SWEEP = [
    ((64, 64, 32), 4, 3),
    ((64, 128, 32), 4, 4),
    ((128, 128, 32), 4, 4),
    ((128, 128, 64), 8, 3),
    ((128, 256, 64), 8, 3),
    ((256, 128, 64), 8, 3),
    ((128, 256, 32), 8, 4),
]


def _torch_gemm(a: torch.Tensor, w: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.gelu(a @ w + bias)


def sweep_gemm(size: int = 4096) -> str:
    """TFLOP/s of each tile configuration for ``gelu(a @ b + bias)`` at ``size``³, against
    PyTorch's product in the same precision; configurations that do not fit are marked."""
    lines = [
        f"GEMM tile sweep, {size}³ + bias + gelu (TFLOP/s; torch: its own product and epilogue)",
        "",
        "| precision | torch | "
        + " | ".join(f"{b[0]}x{b[1]}x{b[2]} w{w} s{s}" for b, w, s in SWEEP)
        + " |",
        "|---|---|" + "---|" * len(SWEEP),
    ]
    flop = 2 * size**3
    gelu = torch.nn.functional.gelu
    for name, dtype, precision in (
        ("fp16", torch.float16, "ieee"),
        ("bf16", torch.bfloat16, "ieee"),
        ("tf32", torch.float32, "tf32"),
        ("fp32", torch.float32, "ieee"),
    ):
        a = torch.randn(size, size, device="cuda", dtype=dtype)
        w = torch.randn(size, size, device="cuda", dtype=dtype)
        bias = torch.randn(size, device="cuda", dtype=dtype)
        want = gelu(a.float() @ w.float() + bias.float())
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        ref_ms = timed(functools.partial(_torch_gemm, a, w, bias), repeats=5, warmup=1, inner=3)
        cells = [f"{flop / ref_ms / 1e9:.0f}"]
        for block, warps, stages in SWEEP:
            run = functools.partial(
                K.gemm, a, w, bias, "gelu", block=block, precision=precision,
                num_warps=warps, num_stages=stages,
            )  # fmt: skip
            try:
                got = run()
                err = (got.float() - want).norm() / want.norm()
                if not err < 2e-2:
                    cells.append(f"wrong ({err:.0e})")
                    continue
                ms = timed(run, repeats=5, warmup=1, inner=3)
                cells.append(f"{flop / ms / 1e9:.0f}")
            except Exception as exc:  # a tile that does not fit the device's resources
                cells.append(f"— ({type(exc).__name__})")
        torch.backends.cuda.matmul.allow_tf32 = False
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


ROW_CONFIGS = {  # (rows, cols): (rows per program, warps) tried
    (16384, 4096): [(1, 4), (1, 8), (1, 16), (1, 32)],
    (131072, 384): [(1, 1), (1, 2), (1, 4), (2, 2), (2, 4), (4, 2), (4, 4), (8, 8)],
    (262144, 128): [(1, 4), (4, 2), (4, 4), (8, 2), (8, 4), (16, 2), (16, 4), (16, 8)],
}


def sweep_rows(bw: float) -> str:
    """Per cent of the copy floor of the softmax and layer-norm kernels with each number of rows
    per program and warps (the launchers pick :func:`~phi_engine.kernels._common.row_config`)."""
    from phi_engine.kernels._common import next_pow2, row_config
    from phi_engine.kernels.layer_norm import _layer_norm_kernel
    from phi_engine.kernels.softmax import _softmax_kernel

    lines = ["Row kernels: % of the copy floor by rows per program (r) and warps (w)", ""]
    for (rows, cols), configs in ROW_CONFIGS.items():
        block = next_pow2(cols)
        lines += [
            "| shape | dtype | kernel | "
            + " | ".join(f"r{r} w{w}" for r, w in configs)
            + " | picked |",
            "|---|---|---|" + "---|" * (len(configs) + 1),
        ]
        for dtype in (torch.float32, torch.float16):
            x = torch.randn(rows, cols, device="cuda", dtype=dtype)
            y = torch.empty_like(x)
            g, b = torch.randn(cols, device="cuda", dtype=dtype), torch.randn(cols, device="cuda")
            nbytes = 2 * x.numel() * x.element_size()
            for kernel in ("softmax", "layer_norm"):
                cells = []
                for per, warps in configs:
                    grid = (-(-rows // per),)
                    if kernel == "softmax":
                        fn = functools.partial(
                            _softmax_kernel[grid], x, x, y, rows, cols, x.stride(0), x.stride(0),
                            y.stride(0), 1.0, HAS_MASK=False, BLOCK=block, ROWS=per,
                            num_warps=warps,
                        )  # fmt: skip
                    else:
                        fn = functools.partial(
                            _layer_norm_kernel[grid], x, x, g, b.to(dtype), y, rows, cols,
                            x.stride(0), x.stride(0), y.stride(0), 1e-5, HAS_RES=False,
                            HAS_BETA=True, BLOCK=block, ROWS=per, num_warps=warps,
                        )  # fmt: skip
                    try:
                        cells.append(f"{nbytes / bw * 1e3 / timed(fn):.0%}")
                    except Exception as exc:
                        cells.append(f"— ({type(exc).__name__})")
                lines.append(
                    f"| {rows}x{cols} | {str(dtype).removeprefix('torch.')} | {kernel} | "
                    + " | ".join(cells)
                    + " | r{1} w{2} |".format(*row_config(cols, x.element_size()))
                )
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("build/gpu-check"))
    p.add_argument("--sweep", choices=["gemm", "rows", "all"], default=None)
    p.add_argument("--only", choices=["sweep"], default=None)
    args = p.parse_args()
    if args.only == "sweep":
        text = ""
        if args.sweep in ("rows", "all"):
            text += sweep_rows(copy_bandwidth())
        if args.sweep in ("gemm", "all"):
            text += "\n" + sweep_gemm()
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_triton_sweep.md").write_text(text)
        print(text)
        return
    torch.manual_seed(0)
    bw = copy_bandwidth()
    rows: list[list[str]] = []

    def row(name: str, ours: Callable[[], Any], theirs: Callable[[], Any], nbytes: int = 0) -> None:
        ms, ref_ms = timed(ours), timed(theirs)
        floor = f"{nbytes / bw * 1e3 / ms:.0%}" if nbytes else "—"
        rows.append([name, f"{ms:.3f}", f"{ref_ms:.3f}", f"{ref_ms / ms:.2f}", floor])

    ln = torch.nn.functional.layer_norm
    for dtype in (torch.float32, torch.float16):
        x = torch.randn(ROWS, 4096, device="cuda", dtype=dtype)
        g = torch.randn(4096, device="cuda", dtype=dtype)
        b = torch.randn(4096, device="cuda", dtype=dtype)
        nbytes = 2 * x.numel() * x.element_size()
        check(K.softmax(x), torch.softmax(x.float(), -1), 1e-2)
        row(
            f"softmax {ROWS}x4096 {dtype}",
            functools.partial(K.softmax, x),
            functools.partial(torch.softmax, x, -1),
            nbytes,
        )
        check(K.layer_norm(x, g, b), ln(x.float(), (4096,), g.float(), b.float()), 1e-2)
        row(
            f"layer_norm {ROWS}x4096 {dtype}",
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
    if args.sweep in ("rows", "all"):
        text += "\n" + sweep_rows(bw)
    if args.sweep in ("gemm", "all"):
        text += "\n" + sweep_gemm()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_triton.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
