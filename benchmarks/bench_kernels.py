"""GEMM and fused-layer throughput of the native core vs numpy, at the same thread count.

Run:  python benchmarks/bench_kernels.py [--threads 1 2] [--write]

It measures the machine's float32 FMA peak with a native loop, checks every kernel result against
numpy first, then times phi_engine and numpy alternately (medians) and prints one markdown table
per thread count. ``--write`` appends the tables to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import math
import pathlib

import numpy as np
from threadpoolctl import threadpool_limits

from _harness import interleaved_medians, machine, markdown_table
from phi_engine import ops
from phi_engine._native import core
from phi_engine.runtime import reference as ref

SQUARE = [64, 128, 256, 512, 1024, 2048]
SKINNY = [(1, 384, 1536), (8, 384, 1536), (32, 384, 1536), (32, 1536, 384), (128, 384, 384)]


def gelu_tanh_numpy(x: np.ndarray) -> np.ndarray:
    """GELU (tanh form) the way a numpy user writes it: one temporary per operation (the cube as
    products: numpy's float32 `x**3` goes through a slow generic power)."""
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * (x * x * x))))


def bench_gemm(m: int, k: int, n: int, threads: int, rng: np.random.Generator) -> list[object]:
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    np.testing.assert_allclose(
        ops.gemm(a, b, threads=threads), ref.gemm(a, b), rtol=1e-4, atol=1e-3 * math.sqrt(k)
    )
    ours, numpy = interleaved_medians([lambda: ops.gemm(a, b, threads=threads), lambda: a @ b])
    flops = 2.0 * m * n * k
    return [
        f"{m}x{k}x{n}",
        f"{flops / ours / 1e9:.1f}",
        f"{flops / numpy / 1e9:.1f}",
        f"{numpy / ours:.2f}",
    ]


def bench_mlp(m: int, k: int, n: int, threads: int, rng: np.random.Generator) -> list[object]:
    x = rng.standard_normal((m, k), dtype=np.float32)
    w = rng.standard_normal((k, n), dtype=np.float32) / math.sqrt(k)
    bias = rng.standard_normal(n, dtype=np.float32)
    expected = ref.gemm(x, w, bias, "gelu_tanh")
    np.testing.assert_allclose(
        ops.gemm(x, w, bias, "gelu_tanh", threads=threads), expected, rtol=1e-4, atol=1e-4
    )
    np.testing.assert_allclose(gelu_tanh_numpy(x @ w + bias), expected, rtol=1e-4, atol=1e-4)
    ours, numpy = interleaved_medians(
        [
            lambda: ops.gemm(x, w, bias, "gelu_tanh", threads=threads),
            lambda: gelu_tanh_numpy(x @ w + bias),
        ]
    )
    return [
        f"linear+bias+gelu {m}x{k}x{n}",
        f"{ours * 1e6:.0f} µs",
        f"{numpy * 1e6:.0f} µs",
        f"{numpy / ours:.2f}",
    ]


def bench_alternation(size: int, threads: int, rng: np.random.Generator) -> list[object]:
    """Each library alone, then calls alternating: a second BLAS pool spinning beside ours would
    show up as a slowdown of the alternating medians over the lone ones."""
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    (ours_alone,) = interleaved_medians([lambda: ops.gemm(a, b, threads=threads)])
    (numpy_alone,) = interleaved_medians([lambda: a @ b])
    ours_alt, numpy_alt = interleaved_medians(
        [lambda: ops.gemm(a, b, threads=threads), lambda: a @ b]
    )
    return [
        f"{size}³",
        f"{ours_alone * 1e6:.0f} / {ours_alt * 1e6:.0f} µs",
        f"{numpy_alone * 1e6:.0f} / {numpy_alt * 1e6:.0f} µs",
        f"{ours_alone / ours_alt:.2f}",
        f"{numpy_alone / numpy_alt:.2f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--write", action="store_true", help="append the tables to benchmarks/RESULTS.md"
    )
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    out = [
        f"### bench_kernels — {datetime.date.today()} — {machine()}",
        "",
        f"BLAS: {core.blas_info()}",
        "",
    ]
    for threads in args.threads:
        # numpy's BLAS gets the same thread count as ours (ours ignores threadpoolctl: its BLAS
        # always runs single-threaded inside the core's own pool).
        with threadpool_limits(threads):
            peak = core.measure_fma_peak(threads, 0.5)
            rows = [bench_gemm(s, s, s, threads, rng) for s in SQUARE]
            rows += [bench_gemm(m, k, n, threads, rng) for m, k, n in SKINNY]
            for row in rows:
                row.insert(3, f"{float(row[1]) / peak:.0%}")
            mlp = [bench_mlp(m, 384, 1536, threads, rng) for m in (1, 8, 32)]
            alternation = [bench_alternation(s, threads, rng) for s in (256, 1024)]
        out += [f"**{threads} thread(s)** — measured FMA peak {peak:.1f} GFLOP/s", ""]
        out += [
            markdown_table(
                ["GEMM M×K×N", "phi GFLOP/s", "numpy GFLOP/s", "phi % of peak", "phi / numpy"], rows
            ),
            "",
        ]
        out += [
            markdown_table(["fused layer", "phi (fused)", "numpy (unfused)", "speed-up"], mlp),
            "",
        ]
        header = [
            "GEMM",
            "phi alone / alternating",
            "numpy alone / alternating",
            "phi kept",
            "numpy kept",
        ]
        out += [markdown_table(header, alternation), ""]
    text = "\n".join(out)
    print(text)
    if args.write:
        path = pathlib.Path(__file__).with_name("RESULTS.md")
        with path.open("a") as f:
            threads = " ".join(map(str, args.threads))
            f.write(f"\nCommand: `python benchmarks/bench_kernels.py --threads {threads}`\n\n")
            f.write(text + "\n")


if __name__ == "__main__":
    main()
